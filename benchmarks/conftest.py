"""Collects medians from the benchmarks and prints bne/FAISS ratios measured in the same run."""

import json
import os
import pathlib
import sys

import pytest

RESULTS: dict[tuple, float] = {}


def record(key: tuple, benchmark) -> None:
    RESULTS[key] = benchmark.stats.stats.median


@pytest.fixture
def recorder():
    return record


def pytest_terminal_summary(terminalreporter):
    tr = terminalreporter
    rows = []
    seg = {k[4]: t for k, t in RESULTS.items() if k[0] == "segments"}
    for key, t in sorted(RESULTS.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        if key[0] != "bne":
            continue
        _, case = key[0], key[1:]
        faiss_t = RESULTS.get(("faiss", *case))
        stream_t = RESULTS.get(("stream", case[0], case[1]))
        rows.append((case, t, faiss_t, stream_t))
    if rows:
        tr.write_sep("=", "bne vs faiss.IndexBinaryFlat (medians, same run)")
        tr.write_line(f"{'case':42s} {'bne ms':>9s} {'faiss ms':>9s} {'faiss/bne':>9s} {'bne/stream':>10s}")
    out = []
    for case, t, ft, st in rows:
        label = ", ".join(f"{k}={v}" for k, v in zip(("codes", "bits", "nq", "threads", "isa"), case, strict=True))
        ratio = f"{ft / t:9.2f}" if ft else f"{'-':>9s}"
        sratio = f"{t / st:10.2f}" if st and case[2] == 1 else f"{'-':>10s}"
        tr.write_line(f"{label:42s} {t * 1e3:9.2f} {ft * 1e3 if ft else float('nan'):9.2f} {ratio} {sratio}")
        out.append(
            {
                "case": dict(zip(("codes", "bits", "nq", "threads", "isa"), case, strict=True)),
                "bne_s": t,
                "faiss_s": ft,
                "stream_s": st,
                "faiss_over_bne": ft / t if ft else None,
            }
        )
    if seg and 1 in seg:
        tr.write_sep("=", "many segments vs one (one native call, 1M x 1024, nq=16, medians)")
        for count in sorted(seg):
            tr.write_line(
                f"{count:6d} segments {seg[count] * 1e3:9.2f} ms   ratio to one segment {seg[count] / seg[1]:.2f}"
            )
    try:
        from bench_search import INTERLEAVED
    except ImportError:
        INTERLEAVED = []
    if INTERLEAVED:
        tr.write_sep("=", "one core, interleaved rounds (best of each; the machine may be loaded)")
        for line in INTERLEAVED:
            tr.write_line(line)
    # only when that module ran: importing it here would import torch (or skip) in every run
    BULK_RATIO = getattr(sys.modules.get("bench_encoder_runtime"), "BULK_RATIO", [])
    if BULK_RATIO:
        tr.write_sep("=", "bulk encoding vs sentence-transformers (SciFact passages, max_length 256, same run)")
        for line in BULK_RATIO:
            tr.write_line(line)
    path = os.environ.get("BNE_BENCH_JSON")
    if path:
        pathlib.Path(path).write_text(json.dumps(out, indent=2))
