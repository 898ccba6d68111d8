"""What bne prints on a terminal: text from files made safe to print (:func:`safe`,
:func:`json_text`), and progress on stderr: a tqdm bar on a terminal; elsewhere (a log file, a
pipe, CI) a plain line every :data:`INTERVAL` seconds, ``encoding: 12000/50000 docs, 410 docs/s,
ETA 1m33s``, because a bar there prints either nothing or one endless line of carriage returns
until the end; and a search's results in words (:func:`describe_mode`, :func:`hit_numbers`), for
``bne search`` and ``bne demo``; and the whole-number argument type of every command's parser
(:func:`int_between`). Imports nothing from bne, so every layer may use it."""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any

# -- terminal safety ------------------------------------------------------------------------------

# C0 (newline and tab included: every field is printed on one line), DEL, C1 (U+009B is an 8-bit
# CSI to some terminals), and the line separators and bidirectional overrides that can make text
# look like something else ("Trojan Source"); lone surrogates (bytes of a non-UTF-8 argument or
# JSON "\\ud800") cannot be printed at all
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_UNSAFE_IN_JSON = re.compile("[\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")  # json.dumps escapes C0


def _escape(m: re.Match) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def safe(value) -> str:
    """``value`` as one line of text with every control character shown as an escape (``\\x1b``)."""
    return _UNSAFE.sub(_escape, str(value))


def json_text(obj) -> str:
    """``json.dumps`` (readable non-ASCII text) with the characters it leaves raw escaped too."""
    return _UNSAFE_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(obj, ensure_ascii=False, indent=1))


def snippet(text: str, width: int = 100) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


# -- progress -------------------------------------------------------------------------------------

#: Seconds between plain progress lines when stderr is not a terminal.
INTERVAL = 10.0


def describe_mode(mode: str, fusion: str, rrf_k: float, depth: int, weights: tuple[float, float]) -> str:
    """A search's mode and fusion settings, in words (the first line of ``bne search`` and the demo)."""
    if mode == "hybrid":
        w = ",".join(f"{x:g}" for x in weights)
        how = "linear fusion of min-max scores" if fusion == "linear" else f"reciprocal rank fusion k={rrf_k:g}"
        return f"hybrid (dense + lexical, {how}, depth {depth}, weights {w}; ranks=dense/lexical)"
    return {"dense": "dense (Hamming distance d)", "lexical": "lexical (BM25)"}[mode]


def hit_numbers(h: dict[str, Any], mode: str, rescore: int | None = None, fusion: str = "rrf") -> str:
    """The numbers a reader needs to see why a hit ranks where it does, in fixed-width columns."""
    d = "   -" if h["distance"] is None else f"{h['distance']:4d}"
    bm25 = "      -" if h["bm25"] is None else f"{h['bm25']:7.2f}"
    if mode == "lexical":
        return f"bm25={bm25}"
    if mode == "dense":
        return f"s={h['score']:8.2f}" if rescore and h["score"] is not None else f"d={d}"
    ranks = "/".join("-" if r is None else str(r) for r in (h["dense_rank"], h["lexical_rank"]))
    return f"{fusion}={h['score']:.4f} d={d} bm25={bm25} ranks={ranks:>7}"


def is_terminal(file: Any) -> bool:
    try:
        return bool(file.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False


def _duration(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class LineProgress:
    """The part of tqdm's interface bne uses (``n``, ``total``, ``update``, ``set_postfix_str``,
    ``refresh``, ``close``), written as one plain line per ``interval`` seconds (from a thread of its
    own with ``ticker``, so also while a slow batch runs) and a last line at ``close``."""

    def __init__(
        self,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        *,
        file: IO[str] | None = None,
        interval: float | None = None,
        disable: bool = False,
        clock: Callable[[], float] = time.monotonic,
        ticker: bool = True,
    ) -> None:
        self.total, self.desc, self.unit, self.n = total, desc, unit, 0
        self.file = file
        self.interval = INTERVAL if interval is None else interval
        self.disable = disable
        self.clock = clock
        self.postfix = ""
        self.started = self.last = clock()
        self.printed: tuple[int, str] | None = None  # count and postfix of the last line printed
        self.lock = threading.Lock()
        self.closed = threading.Event()
        if ticker and not disable:  # a line per interval even while one slow batch runs
            threading.Thread(target=self._tick, daemon=True, name="bne-progress-lines").start()

    def _tick(self) -> None:
        while not self.closed.wait(max(self.interval - (self.clock() - self.last), 0.05)):
            with self.lock:
                now = self.clock()
                if not self.closed.is_set() and now - self.last >= self.interval:
                    self._print(now)

    def line(self, now: float | None = None) -> str:
        now = self.clock() if now is None else now
        elapsed = max(now - self.started, 1e-9)
        rate = self.n / elapsed
        done = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        text = f"{self.desc}: {done} {self.unit}s, {rate:.0f} {self.unit}s/s, {_duration(elapsed)}"
        if self.total is not None and rate > 0 and self.n < self.total:
            text += f", ETA {_duration((self.total - self.n) / rate)}"
        return text + (f" ({self.postfix})" if self.postfix else "")

    def _print(self, now: float) -> None:
        print(self.line(now), file=self.file or sys.stderr, flush=True)
        self.last, self.printed = now, (self.n, self.postfix)

    def update(self, k: int = 1) -> None:
        with self.lock:
            self.n += k
            now = self.clock()
            if not self.disable and now - self.last >= self.interval:
                self._print(now)

    def refresh(self) -> None:
        """A line now, unless the last one already says this."""
        with self.lock:
            if not self.disable and self.printed != (self.n, self.postfix):
                self._print(self.clock())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def close(self) -> None:
        self.closed.set()
        with self.lock:
            if not self.disable and self.printed != (self.n, self.postfix) and self.n:
                self._print(self.clock())
            self.disable = True  # closing twice prints once


def progress_bar(
    total: int | None,
    desc: str,
    unit: str,
    *,
    file: IO[str] | None = None,
    interval: float | None = None,
    disable: bool = False,
) -> Any:
    """A tqdm bar when ``file`` (default stderr) is a terminal or a notebook shows it, else a
    :class:`LineProgress`."""
    out = sys.stderr if file is None else file
    if not disable and (is_terminal(out) or (file is None and "ipykernel" in sys.modules)):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, file=file, dynamic_ncols=True)
    return LineProgress(total, desc, unit, file=file, interval=interval, disable=disable)


#: A terminal is told the model is loading if that takes longer than this (a quick error stays one line).
LOADING_GRACE_S = 0.5


class ProgressBar:
    """Build progress on stderr. While the model loads (a first run also exports it, once) it says
    so; then documents encoded, of the total once the reader has seen the whole input, with
    documents/s, the ETA and how many are committed: a tqdm bar on a terminal, a plain line every
    ``interval`` seconds elsewhere (a log file gets lines, not silence until the end). Nothing is
    printed before an error that comes at once, so the error stays one line."""

    def __init__(self, quiet: bool, *, model: str = "the model", file=None, interval: float | None = None) -> None:
        self.quiet, self.file, self.model = quiet, file, model
        self.interval = INTERVAL if interval is None else interval
        self.bar: Any = None
        self.ready = threading.Event()  # set by the first report: the model is loaded
        self.lock = threading.Lock()
        self.tty = is_terminal(sys.stderr if file is None else file)
        self.said_loading = False
        if not quiet:
            first = LOADING_GRACE_S if self.tty else self.interval
            threading.Thread(target=self._loading, args=(first, self.tty), daemon=True, name="bne-progress").start()

    def _loading(self, first: float, tty: bool) -> None:
        t0, wait = time.monotonic(), first
        while not self.ready.wait(wait):
            with self.lock:
                if self.ready.is_set():
                    return
                took = "" if tty else f", {int(time.monotonic() - t0)}s"
                print(f"bne: loading {self.model}{took}", file=self.file or sys.stderr, flush=True)
                self.said_loading = True
            if tty:  # once: the bar follows
                return
            wait = max(self.interval, 0.01)

    def __call__(self, p) -> None:
        if self.quiet:
            return
        first = self.bar is None  # the first report comes when the model is ready
        if first:
            with self.lock:
                self.ready.set()
            self.bar = progress_bar(p.total, "encoding", "doc", file=self.file, interval=self.interval)
        if p.total is not None and self.bar.total != p.total:
            self.bar.total = p.total
        self.bar.set_postfix_str(f"{p.committed} committed", refresh=False)
        self.bar.update(p.encoded - self.bar.n)
        if first and p.total != 0 and (self.tty or self.said_loading):  # "encoding" now, not after a batch
            self.bar.refresh()

    def close(self) -> None:
        with self.lock:
            self.ready.set()
        if self.bar is not None:
            self.bar.close()


def int_between(lo: int, hi: int | None = None):
    """An argparse type: a whole number in [lo, hi] (argparse then exits 2 with one usage line)."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if v < lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(
                f"must be {f'>= {lo}' if hi is None else f'between {lo} and {hi}'}, got {v}"
            )
        return v

    return parse
