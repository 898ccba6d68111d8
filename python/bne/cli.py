"""The ``bne`` command: build, search, info, verify, remove, bench, demo, train, eval.

The parser and the entry point; what each subcommand does is in :mod:`bne.commands`. User
mistakes print one line on stderr and exit non-zero; ``--debug`` shows the traceback. Arguments
are checked before any file is created. Text that comes from files (documents, ids, metadata,
paths, error messages) is printed through :func:`bne.console.safe`, so no control character
reaches the terminal.
"""

from __future__ import annotations

import argparse
import functools
import math
import re
import sqlite3
import sys
import warnings

from . import _core, lexical
from .commands import (
    EXIT_FAIL,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    cmd_bench,
    cmd_build,
    cmd_demo,
    cmd_eval,
    cmd_info,
    cmd_models,
    cmd_remove,
    cmd_search,
    cmd_shard,
    cmd_train,
    cmd_verify,
)
from .console import int_between, safe
from .encoder.base import threads_option
from .errors import DocStoreDamagedError, DocStoreMismatchError, IndexFormatError, UserError

# -- argument types (checked by argparse, before anything is read or created) ------------------


MAX_K = 100_000  # hits per query the command prints; the API has its own limit
RESCORE_DEFAULT = 100


def float_at_least(lo: float):
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(v) or v < lo:
            raise argparse.ArgumentTypeError(f"must be a finite number >= {lo:g}, got {text!r}")
        return v

    return parse


def weights_arg(text: str) -> tuple[float, float]:
    """--weights DENSE,LEXICAL: two numbers >= 0, not both 0."""
    parts = text.split(",")
    try:
        w = tuple(float(p) for p in parts)
    except ValueError:
        w = ()
    if len(w) != 2 or not all(math.isfinite(x) and x >= 0 for x in w) or w == (0.0, 0.0):
        raise argparse.ArgumentTypeError(
            f"expected two numbers >= 0 (not both 0) as DENSE,LEXICAL, e.g. 1,0.5; got {text!r}"
        )
    return w[0], w[1]


def bits_arg(text: str) -> int:
    """--bits: a multiple of 64 (what the index stores), at most bne's limit."""
    from .codes import MAX_BITS

    v = int_between(64, MAX_BITS)(text)
    if v % 64:
        raise argparse.ArgumentTypeError(f"must be a multiple of 64, got {v}")
    return v


def parse_sizes(text: str) -> list[int]:
    """--sizes for bench: comma-separated counts, with k / M / G suffixes (10k, 1M) or 1e6."""
    out = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?(?:e\d+)?)\s*([kmg]?)\s*", part.replace("_", ""), re.I)
        if not m:
            raise argparse.ArgumentTypeError(f"bad size {part!r}: use numbers like 10000, 10k or 1M, comma-separated")
        n = float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2).lower()]
        if not 1 <= n <= 1e12 or n != int(n):
            raise argparse.ArgumentTypeError(f"bad size {part!r}: a database size is a whole number >= 1")
        out.append(int(n))
    return sorted(set(out))


def sizes_arg(text: str) -> str:
    return ",".join(map(str, parse_sizes(text)))  # bench.py reads plain comma-separated counts


def typed_threads(argv: list[str]) -> int | None:
    """The ``--threads`` as typed (the last one counts, as for argparse), for the note when
    :func:`threads_option` lowered it; None when not given. Called once parsing succeeded."""
    typed = None
    for i, a in enumerate(argv):
        if a == "--":
            break
        if a == "--threads" and i + 1 < len(argv):
            typed = argv[i + 1]
        elif a.startswith("--threads="):
            typed = a.split("=", 1)[1]
    try:
        return None if typed is None else int(typed)
    except ValueError:
        return None


def rescore_argv(argv: list[str]) -> list[str]:
    """``--rescore`` takes its number only when one follows; otherwise the next word is the
    query, not a bad number (``bne search x.bne --rescore "a cat"``)."""
    out = list(argv)
    for i, a in enumerate(out):
        if a == "--":
            break
        if a == "--rescore" and not (i + 1 < len(out) and re.fullmatch(r"[+-]?\d+", out[i + 1])):
            out[i] = f"--rescore={RESCORE_DEFAULT}"
    return out


# -- entry point --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    # allow_abbrev=False everywhere: a prefix is not an option (--mode must not be read as --model)
    p = argparse.ArgumentParser(
        prog="bne", description="Exact Hamming search over native binary text embeddings.", allow_abbrev=False
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--version", action="version", version=f"bne {_core.__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    cmd = functools.partial(sub.add_parser, allow_abbrev=False)

    b = cmd("build", help="encode a corpus into an index file (+ a SQLite docstore beside it)")
    b.add_argument(
        "input",
        nargs="?",
        help=".txt (a document per line), .jsonl (id, text, title), .tsv/.csv, or a BEIR folder; left out with "
        "--append, only the lexical (BM25) index of an index built by an older bne is added",
    )
    b.add_argument("-o", "--output", required=True, help="index file to write")
    b.add_argument(
        "--bits",
        type=bits_arg,
        default=None,
        help="code width (default: the model's, or with --append the index's; 'default' has 1024 and 2048)",
    )
    b.add_argument(
        "--model",
        default="default",
        help="'default' (all-MiniLM-L6-v2 + shipped head), a shipped or registered model name, or the path of "
        "a head .safetensors, a BinaryEmbedder folder/file or a seed .pt",
    )
    b.add_argument(
        "--batch-size",
        type=int_between(1, 1 << 20),
        default=64,
        help="texts per encoder call (default 64)",
    )
    b.add_argument("--commit-every", type=int_between(1), default=2048, help="documents per durable commit")
    b.add_argument("--threads", type=threads_option, default=None, help="encoder and search threads (default: all)")
    b.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where to encode: cuda (torch fp16), cpu, or auto (cuda when a GPU is visible)",
    )
    b.add_argument(
        "--append",
        action="store_true",
        help="add to an existing index (skips documents already in it); an index built by an older bne first "
        "gets its lexical index (resumable)",
    )
    b.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    b.add_argument(
        "--ray", action="store_true", help="encode on a Ray cluster into a folder of shards (-o is a folder)"
    )
    b.add_argument("--shards", type=int_between(1, 1 << 16), default=None, help="shards for --ray (default 4)")
    b.add_argument("--ray-address", default=None, help="Ray cluster address (default: $RAY_ADDRESS or a local Ray)")
    b.set_defaults(fn=cmd_build)

    s = cmd("search", help="search an index with text queries")
    s.add_argument("index", help="index file (or a folder of shards from --ray / bne shard)")
    s.add_argument("query", nargs="*", help="query texts (each its own query; quote a query of several words)")
    s.add_argument("-k", type=int_between(1, MAX_K), default=10, help=f"hits per query (at most {MAX_K})")
    s.add_argument(
        "--queries",
        help="file with one query per line, or .jsonl with a \"text\" per line (BEIR queries.jsonl); '-' for stdin",
    )
    s.add_argument(
        "--rescore",
        type=int_between(1, MAX_K),
        default=None,
        metavar="M",
        help=f"re-rank the top M (default {RESCORE_DEFAULT}) Hamming candidates with float query logits; "
        "a word after --rescore is the query, not M",
    )
    s.add_argument(
        "--mode",
        choices=("hybrid", "dense", "lexical"),
        default=None,
        help="hybrid: words (BM25) and bits (Hamming) fused by reciprocal rank; dense: bits only; lexical: "
        "words only (default: hybrid where the docstore has its lexical index, else dense)",
    )
    s.add_argument(
        "--rrf-k",
        type=float_at_least(0),
        default=None,  # None: not given (a given option the search cannot use gets a note)
        metavar="K",
        help=f"hybrid: the RRF constant (default {lexical.RRF_K:g})",
    )
    s.add_argument(
        "--depth",
        type=int_between(1, MAX_K),
        default=None,
        help=f"hybrid: how many of each side's best are fused (default {lexical.DEPTH}; at least -k)",
    )
    s.add_argument(
        "--weights",
        type=weights_arg,
        default=None,
        metavar="DENSE,LEXICAL",
        help="hybrid: each side's weight in the fusion (default {:g},{:g} for rrf, {:g},{:g} for linear)".format(
            *lexical.WEIGHTS, *lexical.LINEAR_WEIGHTS
        ),
    )
    s.add_argument(
        "--fusion",
        choices=lexical.FUSIONS,
        default=None,
        help="hybrid: rrf = reciprocal rank fusion (default); linear = weighted sum of each side's scores "
        "min-max normalised over its --depth list (Elasticsearch's linear retriever)",
    )
    s.add_argument("--model", default=None, help="override the model recorded in the index")
    s.add_argument("--json", action="store_true", help="print the hits and timings as JSON on stdout")
    s.add_argument("--threads", type=threads_option, default=None, help="encoder and search threads (default: all)")
    s.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="cpu",
        help="where to encode the queries (default cpu: no GPU start-up for a few queries)",
    )
    s.add_argument("--ray-address", default=None, help="Ray cluster for a sharded index folder")
    s.set_defaults(fn=cmd_search)

    mo = cmd("models", help="list the models bne can find, or add one: bne models add PATH")
    mo.add_argument(
        "action", nargs="?", choices=("list", "add"), default="list", help="list (the default) or add PATH..."
    )
    mo.add_argument("paths", nargs="*", help="model files or folders to add (a moved model is found again)")
    mo.add_argument("--json", action="store_true", help="print the models as JSON")
    mo.set_defaults(fn=cmd_models)

    sh = cmd("shard", help="split index files into N shard files for a Ray cluster")
    sh.add_argument(
        "index",
        nargs="+",
        help="index files to split (their codes and documents, which keep their ids); each is verified first, "
        "and a file given twice or an id in two of them is refused",
    )
    sh.add_argument("-o", "--output", required=True, help="folder for the shards, their documents and manifest")
    sh.add_argument(
        "--shards",
        type=int_between(1, 1 << 16),
        required=True,
        help="number of shard files to write (at most one per live code: more is capped, with a note)",
    )
    sh.set_defaults(fn=cmd_shard)

    i = cmd("info", help="describe an index file")
    i.add_argument("index", help="index file")
    i.add_argument("--json", action="store_true", help="print the description as JSON")
    i.set_defaults(fn=cmd_info)

    v = cmd("verify", help="check every checksum of an index file (exit 1 on damage)")
    v.add_argument("index", help="index file")
    v.set_defaults(fn=cmd_verify)

    rm = cmd("remove", help="remove documents by their ids from an index file, its docstore and lexical index")
    rm.add_argument("index", help="index file")
    rm.add_argument(
        "doc_ids", nargs="*", metavar="ID", help="ids of the documents to remove (doc_id in bne search --json)"
    )
    rm.add_argument("--ids", metavar="FILE", help="a file of document ids to remove, one per line ('-' for stdin)")
    rm.add_argument("--compact", action="store_true", help="then rewrite the files without the removed documents")
    rm.set_defaults(fn=cmd_remove)

    be = cmd("bench", help="the 'Why binary?' speed table: float32, INT8, FAISS binary, bne")
    be.add_argument("--sizes", type=sizes_arg, default="10k,100k,1M", help="comma-separated database sizes (10k, 1M)")
    be.add_argument("--queries", type=int_between(1, MAX_K), default=16, help="random queries per size (default 16)")
    be.add_argument("-k", type=int_between(1, MAX_K), default=10, help="neighbours per query (default 10)")
    be.add_argument(
        "--repeat",
        type=int_between(1),
        default=5,
        help="timed runs per method and size; the median is reported (default 5)",
    )
    be.add_argument("--threads", type=threads_option, default=None, help="threads for every method (default: all)")
    be.add_argument(
        "--out", default="bne-bench", help="prefix of the .json and .png files written (a folder: FOLDER/bne-bench)"
    )
    be.set_defaults(fn=cmd_bench)

    d = cmd("demo", help="offline: index the Python standard library's docstrings and search them")
    d.add_argument("--limit", type=int_between(1), default=3000, help="documents to index")
    d.add_argument("--keep", default=None, help="write the demo index here instead of a temporary folder")
    d.set_defaults(fn=cmd_demo)

    cmd("train", help="train a binary head (see bne train --help)", add_help=False)
    cmd("eval", help="evaluate a model on STS and BEIR data (see bne eval --help)", add_help=False)
    return p


def subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """The parser of one ``bne`` command (for its usage line in an error)."""
    for action in parser._subparsers._group_actions if parser._subparsers else []:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            return action.choices[command]
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    rest = [a for a in argv if a != "--debug"]
    old_showwarning = warnings.showwarning
    if not debug:  # warnings as one escaped line, not file:line plus source
        warnings.showwarning = lambda message, category, *a, **k: print(
            f"bne: warning: {safe(message)}", file=sys.stderr
        )
    try:
        if rest and rest[0] in ("train", "eval"):  # their own argument parsers
            return (cmd_train if rest[0] == "train" else cmd_eval)(rest[1:])
        if rest and rest[0] == "search":
            rest = rescore_argv(rest)
        parser = build_parser()
        args, extra = parser.parse_known_args(rest)
        if extra:  # argparse ends the query list at the first option: `search x.bne -k 2 "query"`
            if args.command != "search" or any(e.startswith("-") and e != "-" for e in extra):
                # the command's own usage line, not bne's: it is the one that lists the options
                subparser(parser, args.command).error(f"unrecognized arguments: {' '.join(extra)}")
            args.query = list(args.query or []) + extra
        typed = typed_threads(rest)
        if typed and args.threads and typed > args.threads:  # threads_option clamped it to the CPUs
            print(
                f"bne: note: --threads {typed} is more than the {args.threads} CPUs here; using {args.threads}",
                file=sys.stderr,
            )
        return args.fn(args)
    except KeyboardInterrupt:
        print("bne: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (UserError, ValueError, OSError, KeyError, sqlite3.Error) as e:
        if debug:
            raise
        damaged = (IndexFormatError, DocStoreMismatchError, DocStoreDamagedError)
        code = EXIT_FAIL if isinstance(e, damaged) else EXIT_USAGE
        if isinstance(e, KeyError):
            msg = f"missing {e}"
        elif isinstance(e, OSError) and e.strerror and e.filename is not None:  # e.g. disk full, permission denied
            msg = f"{e.filename}: {e.strerror}" + (f" -> {e.filename2}" if e.filename2 else "")
        else:
            msg = str(e) or type(e).__name__
        print(f"bne: error: {safe(msg)}", file=sys.stderr)
        return code
    except Exception as e:  # a bug, not a user mistake: still one line, the traceback with --debug
        if debug:
            raise
        print(f"bne: error: {safe(type(e).__name__)}: {safe(e)} (run with --debug for the traceback)", file=sys.stderr)
        return EXIT_FAIL
    finally:
        warnings.showwarning = old_showwarning


if __name__ == "__main__":
    sys.exit(main())
