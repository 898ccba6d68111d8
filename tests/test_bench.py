"""`bne bench` without its dev dependency: faiss missing skips the FAISS rows, never the command."""

from __future__ import annotations

import argparse
import json
import sys

from bne.bench import run_bench


def test_bench_without_faiss_measures_bne_only(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss -> ImportError
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    args = argparse.Namespace(sizes="1000,2000", queries=3, k=5, threads=1, repeat=1, out=str(tmp_path / "b"))
    assert run_bench(args) == 0
    out = capsys.readouterr().out
    notes = [line for line in out.splitlines() if line.startswith("note:")]
    assert notes == ["note: faiss is not installed: FAISS rows skipped (pip install faiss-cpu to compare)"]
    rows = [line.split()[0:2] for line in out.splitlines() if line.startswith(("bne ", "FAISS", "float32", "INT8"))]
    assert rows == [["bne", "1024"], ["bne", "2048"]]
    data = json.loads((tmp_path / "b.json").read_text())
    assert set(data["ms"]) == {"bne 1024", "bne 2048"}
    assert all(data["ms"]["bne 1024"][n] > 0 for n in ("1000", "2000"))
