"""``bne demo``: a fully offline end-to-end run on a corpus every Python install has: the
docstrings of the standard library, read from its source files with ``ast`` (nothing imported,
nothing downloaded, no data shipped)."""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import os
import sys
import sysconfig
import tempfile
import time

QUERIES = [
    "read a compressed file",
    "parse command line options",
    "send an email message over SMTP",
    "generate random numbers",
    "format a date as text",
]
SKIP_DIRS = {
    "test",
    "tests",
    "idlelib",
    "tkinter",
    "turtledemo",
    "site-packages",
    "dist-packages",
    "lib2to3",
    "ensurepip",
}


def stdlib_docstrings(limit: int) -> list[tuple[str, str]]:
    """(qualified name, first paragraph of its docstring) for modules, classes and functions."""
    root = sysconfig.get_paths()["stdlib"]
    out: list[tuple[str, str]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            if not name.endswith(".py"):
                continue
            path = os.path.join(dirpath, name)
            module = os.path.relpath(path, root)[:-3].replace(os.sep, ".").removesuffix(".__init__")
            try:
                with open(path, encoding="utf-8") as f:
                    tree = ast.parse(f.read())
            except (SyntaxError, UnicodeDecodeError, OSError):
                continue
            nodes = [(module, tree)] + [
                (f"{module}.{n.name}", n)
                for n in tree.body
                if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and not n.name.startswith("_")
            ]
            for qual, node in nodes:
                doc = ast.get_docstring(node)
                if doc:
                    para = " ".join(doc.strip().split("\n\n")[0].split())
                    if len(para) >= 30:
                        out.append((qual, para))
                        if len(out) >= limit:
                            return out
    return out


#: written beside the demo's index: a later ``--keep`` of the same folder may replace those files
DEMO_MARK = ".bne-demo"


def run_demo(args) -> int:
    from . import lexical
    from .collection import Collection
    from .console import ProgressBar, describe_mode, hit_numbers, safe
    from .corpus import Doc
    from .docstore import path_for
    from .errors import UserError

    t0 = time.perf_counter()
    docs = stdlib_docstrings(args.limit)
    print(f"corpus: {len(docs)} docstrings of the Python {sys.version.split()[0]} standard library (read with ast)")
    if args.keep is not None and not os.path.isdir(args.keep):
        what = "is not a folder" if os.path.lexists(args.keep) else "does not exist"
        raise UserError(f"--keep {args.keep} {what}: give a folder for the demo index")
    folder = args.keep or tempfile.mkdtemp(prefix="bne-demo-")
    path = os.path.join(folder, "stdlib.bne")
    mark = os.path.join(folder, DEMO_MARK)
    if os.path.lexists(path) or os.path.lexists(path_for(path)):
        # only an earlier demo's files are replaced: a file of the user's by that name is refused
        if not os.path.isfile(mark):
            raise UserError(f"{path} exists and was not written by bne demo: remove it, or give --keep another folder")
        for p in (path, path_for(path)):
            with contextlib.suppress(FileNotFoundError):
                os.remove(p)
    with open(mark, "w") as f:
        f.write("bne demo wrote stdlib.bne here; a later bne demo --keep replaces it\n")
    coll = Collection.create(path, model="default", bits=1024)
    with coll:
        print(f"model: {coll.model.name if coll.model else '?'} ({coll.bits} bits, all-MiniLM-L6-v2 backbone, offline)")
        bar = ProgressBar(quiet=False)
        try:
            added = coll.add((Doc(q, d, title=q) for q, d in docs), progress=bar)
        finally:
            bar.close()
        rate = added.added / added.seconds if added.seconds else 0.0
        print(f"encoded {added.added} documents in {added.seconds:.1f} s ({rate:.0f} docs/s); index: {path}")
        res = coll.search(QUERIES, 3)
    # as `bne search` shows it, with the search defaults
    print(f"\nmode: {describe_mode(res.mode, 'rrf', lexical.RRF_K, lexical.DEPTH, lexical.WEIGHTS)}")
    for q, row, mode in zip(QUERIES, res.hits, res.modes, strict=True):
        print(f"\nquery: {q}")
        for h in row:
            nums = hit_numbers(dataclasses.asdict(h), mode)
            print(f"  {nums}  {safe(h.doc_id):34s} {safe(h.text[:60])}")
    print(
        f"\n{len(QUERIES)} queries encoded and searched in {res.encode_ms + res.search_ms:.0f} ms; "
        f"whole demo {time.perf_counter() - t0:.0f} s"
    )
    print(f'try: bne search {path} "your question"')
    return 0
