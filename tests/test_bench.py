"""`bne bench` without its dev dependency: faiss missing skips the FAISS rows, never the command."""

from __future__ import annotations

import argparse
import json
import sys

from bne.bench import cpu_model, run_bench


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


def test_bench_out_folder_gets_a_file_name_and_the_cpu_is_recorded(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "faiss", None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    for out, prefix in [(f"{tmp_path}/", tmp_path / "bne-bench"), (str(tmp_path / "r.json"), tmp_path / "r")]:
        args = argparse.Namespace(sizes="500", queries=2, k=3, threads=1, repeat=1, out=out)
        assert run_bench(args) == 0
        printed = capsys.readouterr().out
        assert f"wrote {prefix}.json (no plot" in printed, printed
        data = json.loads(prefix.with_suffix(".json").read_text())
        assert data["cpu"] == cpu_model() and data["cpu"] and f"; CPU {data['cpu']}" in printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bne-bench.json", "r.json"]


def test_bench_checks_the_out_folder_before_running(tmp_path, capsys):
    from runner import run_main

    code, out, err = run_main("bench", "--sizes", "10k", "--out", tmp_path / "no" / "x")
    assert (code, err) == (
        2,
        f"bne: error: --out {tmp_path / 'no' / 'x.json'}: folder {tmp_path / 'no'} does not exist\n",
    )
    assert "generating" not in out and not (tmp_path / "no").exists()
