"""``bne demo``: a fully offline end-to-end run on a corpus every Python install has: the
docstrings of the standard library, read from its source files with ``ast`` (nothing imported,
nothing downloaded, no data shipped)."""

from __future__ import annotations

import ast
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


def run_demo(args) -> int:
    import numpy as np

    from . import index as bindex
    from .cli import safe
    from .corpus import Doc
    from .docstore import DocStore
    from .encoder import Encoder

    t0 = time.perf_counter()
    docs = stdlib_docstrings(args.limit)
    print(f"corpus: {len(docs)} docstrings of the Python {sys.version.split()[0]} standard library (read with ast)")
    encoder = Encoder.default(bits=1024)
    print(f"model: {encoder.info.get('name')} ({encoder.bits} bits, all-MiniLM-L6-v2 backbone, offline)")
    folder = args.keep or tempfile.mkdtemp(prefix="bne-demo-")
    path = os.path.join(folder, "stdlib.bne")
    for p in (path, path + ".docs.sqlite"):
        if os.path.exists(p):
            os.remove(p)
    t1 = time.perf_counter()
    codes = encoder.encode([f"{q}: {d}" for q, d in docs], batch_size=64, show_progress=True)
    t2 = time.perf_counter()
    ids = np.arange(len(docs), dtype=np.int64)
    store = DocStore(path, create=True)
    store.insert(ids, [Doc(q, d) for q, d in docs])
    store.commit()
    with bindex.open(
        path, mode="a", bits=1024, metadata={"model": "default", "model_name": encoder.info.get("name"), "bits": 1024}
    ) as idx:
        idx.add(codes, ids=ids)
    print(f"encoded {len(docs)} documents in {t2 - t1:.1f} s ({len(docs) / (t2 - t1):.0f} docs/s); index: {path}")
    idx = bindex.open(path)
    t3 = time.perf_counter()
    qcodes = encoder.encode(QUERIES)
    D, I = idx.search(qcodes, 3)
    t4 = time.perf_counter()
    found = store.get(I.ravel())
    for q, drow, irow in zip(QUERIES, D, I, strict=True):
        print(f"\nquery: {q}")
        for d, i in zip(drow, irow, strict=True):
            doc = found[int(i)]
            print(f"  d={d:4d}  {safe(doc.ext_id):38s} {safe(doc.text[:70])}")
    print(
        f"\n{len(QUERIES)} queries encoded and searched in {(t4 - t3) * 1e3:.0f} ms; "
        f"whole demo {time.perf_counter() - t0:.0f} s"
    )
    print(f'try: bne search {path} "your question"')
    return 0
