"""Trust of model files (issue 18, items 1, 3, 4): a crafted ``--resume`` checkpoint cannot run
code; a FIFO where a model file is expected is refused, never read (no hang); a model swapped for
other weights of the same size and mtime, and a damaged cached ONNX graph, are never used as if
they were the recorded ones."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from bne.encoder.base import have
from runner import run_bne, run_main

ROOT = Path(__file__).resolve().parents[1]


needs_torch = pytest.mark.skipif(not (have("torch") and have("safetensors")), reason="torch not installed")


# ------------------------------------------------------------------ item 1: --resume checkpoints
class _Marker:
    """Unpickling this creates ``path``: what a crafted checkpoint would do to the user."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _tiny_tsv(tmp_path: Path) -> Path:
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("".join(f"what is thing {i}\tthing {i} is a thing\n" for i in range(8)))
    return tsv


@needs_torch
def test_resume_of_a_crafted_checkpoint_runs_no_code(tmp_path):
    import torch

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt.pt"
    torch.save({"module": _Marker(marker), "step": 1}, evil)
    rc, _, err = run_main("train", "--data", _tiny_tsv(tmp_path), "--out", tmp_path / "m", "--resume", evil)
    assert not marker.exists()  # the unpickle never ran os.system
    assert rc == 2 and err.count("\n") == 1, err
    assert "not a bne training checkpoint" in err and "posix.system" in err and "refused" in err
    assert not (tmp_path / "m.safetensors").exists()  # training never started


@needs_torch
@pytest.mark.parametrize(
    "content, says",
    [
        ({"module": {"w": 1}}, "missing"),
        ([1, 2, 3], "not a dict"),
        ({"format": "something-else"}, "another format"),
    ],
)
def test_resume_of_a_foreign_checkpoint_is_one_line(tmp_path, content, says):
    import torch

    from bne.training.checkpoint import CheckpointError, load_checkpoint

    p = tmp_path / "x.pt"
    torch.save(content, p)
    with pytest.raises(CheckpointError, match=says) as e:
        load_checkpoint(p)
    assert "\n" not in str(e.value) and str(p) in str(e.value)
    p.write_bytes(b"not a zip and not a pickle")
    with pytest.raises(CheckpointError, match="not a bne training checkpoint"):
        load_checkpoint(p)


@needs_torch
def test_checkpoint_file_round_trip_resumes_exactly(tmp_path):
    """save_checkpoint -> file -> load_checkpoint (weights_only) resumes to the uninterrupted weights."""
    import torch

    from bne.training.checkpoint import load_checkpoint, save_checkpoint
    from bne.training.config import TrainConfig
    from bne.training.recipes import train_head

    rng = np.random.default_rng(0)
    feats = rng.standard_normal((40, 16)).astype(np.float32)
    pairs = rng.integers(0, 40, (20, 2))
    cfg = TrainConfig(bits=64, batch_size=4, epochs=2, pool_batch=8, scored_batch=0, checkpoint_every=3, log_every=0)
    kw = dict(pool=np.arange(40), log=None)
    paths: list[Path] = []

    def save(st):
        paths.append(tmp_path / f"{st['step']}.pt")
        save_checkpoint(st, paths[-1])

    full = train_head(pairs, feats, cfg, checkpoint_fn=save, **kw).state_dict()
    assert [p.name for p in paths] == ["3.pt", "6.pt", "9.pt"]
    state = load_checkpoint(paths[1])
    assert state["step"] == 6
    resumed = train_head(pairs, feats, cfg, resume=state, **kw).state_dict()
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    # a checkpoint of another data set (other row count) is refused before a step is taken
    with pytest.raises(ValueError, match="20 training rows"):
        train_head(pairs[:12], feats, cfg, resume=load_checkpoint(paths[1]), **kw)


def test_no_unsafe_unpickling_left_in_bne():
    """Every torch.load in bne reads weights only; nothing unpickles or allows pickles."""
    src = ROOT / "python" / "bne"
    for f in src.rglob("*.py"):
        text = f.read_text()
        assert "weights_only=False" not in text, f
        assert "allow_pickle=True" not in text, f
        assert "pickle.load" not in text and "pickle.loads" not in text, f
        for i, line in enumerate(text.splitlines()):
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{f}:{i + 1}"


# ------------------------------------------------------------------ item 3: FIFOs are never read
def _returns_within(fn, seconds: float, fifos=()):
    """fn()'s result or exception, or a failure when it blocks longer than ``seconds`` (then the
    FIFOs get a writer so the blocked reader, and this test run, can go on)."""
    import threading

    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        for f in fifos:
            with contextlib.suppress(OSError):
                os.close(os.open(f, os.O_WRONLY | os.O_NONBLOCK))
        t.join(5)
        pytest.fail(f"{fn} blocked on a FIFO for more than {seconds} s")
    return box


def _fifo_folder(tmp_path: Path, name: str, weights: str) -> tuple[Path, Path]:
    d = tmp_path / name
    d.mkdir()
    os.mkfifo(d / weights)
    return d, d / weights


@pytest.mark.parametrize("weights", ["model.safetensors", "weights.safetensors", "model.pt", "x.pt"])
def test_fifo_weights_in_a_model_folder_are_refused_not_read(tmp_path, weights):
    from bne import models
    from bne.errors import ModelError

    d, fifo = _fifo_folder(tmp_path, "m", weights)
    # bne build --model DIR / bne models add DIR: both identify the folder first
    box = _returns_within(lambda: models.identify(d, remember=False), 10, [fifo])
    assert isinstance(box.get("error"), ModelError), box
    assert str(fifo) in str(box["error"]) and "not a regular file" in str(box["error"])
    # bne search: a folder under the model's name beside the index is a candidate, skipped
    ref = models.ModelRef("m", "ab" * 32, "embedder", 1024)
    box = _returns_within(lambda: models.resolve(ref, search_dirs=[tmp_path]), 10, [fifo])
    assert isinstance(box.get("error"), models.ModelNotFoundError), box
    # a FIFO given as the model itself, and hashed directly
    box = _returns_within(lambda: models.identify(fifo, remember=False), 10, [fifo])
    assert isinstance(box.get("error"), ModelError) and "not a regular file" in str(box["error"]), box
    from bne.encoder.base import file_sha256

    box = _returns_within(lambda: file_sha256(fifo), 10, [fifo])
    assert isinstance(box.get("error"), OSError) and "not a regular file" in str(box["error"]), box


@needs_torch
def test_fifo_weights_are_refused_by_the_torch_loaders(tmp_path):
    from bne.encoder.model import BinaryEmbedder, load_weights

    d, fifo = _fifo_folder(tmp_path, "m", "model.safetensors")
    box = _returns_within(lambda: BinaryEmbedder.from_pretrained(d), 10, [fifo])
    assert isinstance(box.get("error"), ValueError) and "not a regular file" in str(box["error"]), box
    for name in ("w.pt", "w.safetensors"):
        os.mkfifo(tmp_path / name)
        box = _returns_within(lambda n=name: load_weights(tmp_path / n), 10, [tmp_path / name])
        assert isinstance(box.get("error"), OSError) and "not a regular file" in str(box["error"]), box


def test_fifo_model_folder_on_the_command_line_is_one_line_no_hang(tmp_path):
    d, fifo = _fifo_folder(tmp_path, "m", "model.safetensors")
    docs = tmp_path / "docs.txt"
    docs.write_text("one document\n")
    for args in (["models", "add", str(d)], ["build", str(docs), "-o", str(tmp_path / "x.bne"), "--model", str(d)]):
        try:
            out = run_bne(*args, timeout=120)
        except subprocess.TimeoutExpired:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            pytest.fail(f"bne {args[0]} hung on a FIFO")
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1, out.stderr
        assert lines[0].startswith("bne: error: ") and "not a regular file" in lines[0], lines
    assert not (tmp_path / "x.bne").exists()


# ------------------------------------------- item 4a: same size, same mtime, other weights
def _swap_keeping_size_and_mtime(path: Path, other: Path) -> None:
    """What ``cp -p other path`` does: the content is rewritten in place, then the old times are set back."""
    st = path.stat()
    assert other.stat().st_size == st.st_size
    with open(other, "rb") as src, open(path, "r+b") as dst:
        dst.write(src.read())
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns)


def test_file_sha256_is_not_fooled_by_a_same_size_same_mtime_swap(tmp_path):
    from bne.encoder.base import file_sha256

    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"\x01" * 4096)
    b.write_bytes(b"\x02" * 4096)
    first = file_sha256(a)
    assert file_sha256(a) == first  # memoised
    _swap_keeping_size_and_mtime(a, b)
    assert file_sha256(a) == file_sha256(b, memo=False) != first


@needs_torch
def test_swapped_model_file_is_refused_not_used(tmp_path, monkeypatch):
    """An index built with model A; A's file then holds other weights of the same size and mtime:
    search must refuse it (before: the document's own text came back at distance ~500, exit 0)."""
    from bne import models
    from bne.encoder.model import save_safetensors
    from test_models import DOCS, TINY_BERT, bne, make_embedder, one_line_error, top_hits

    cache = tmp_path / "cache"
    mdir = tmp_path / "models"
    mdir.mkdir()
    conf = {"bits": 1024, "binary_dim": 1024, "backbone": dict(TINY_BERT), "normalize": False, "max_length": 64}
    for name, seed in (("m", 2), ("other", 3)):
        sd = {k: v.contiguous() for k, v in make_embedder(seed, TINY_BERT).state_dict().items()}
        save_safetensors(sd, mdir / f"{name}.safetensors")
        (mdir / f"{name}.json").write_text(json.dumps(conf))
    model = mdir / "m.safetensors"
    (tmp_path / "docs.txt").write_text("\n".join(DOCS) + "\n")
    index = tmp_path / "docs.bne"
    bne(cache, "build", tmp_path / "docs.txt", "-o", index, "--model", model, "-q", check=True)
    assert all(d == 0 for _, d in top_hits(cache, index, DOCS[:2]))
    _swap_keeping_size_and_mtime(model, mdir / "other.safetensors")
    one_line_error(bne(cache, "search", index, DOCS[1]), "'m'", "is not found")
    monkeypatch.setenv("BNE_CACHE_DIR", str(cache))
    assert models.identify(model, remember=False).sha256 == models.identify(mdir / "other.safetensors").sha256


# ------------------------------------------------------- item 4b: the cached ONNX graph is checked
def test_ensure_cached_checks_the_recorded_sha256(tmp_path, capsys):
    from bne.encoder.cache import ensure_cached

    made = []

    def export(tmp: Path) -> None:
        made.append(tmp)
        tmp.write_bytes(b"graph " * 1000)

    path = tmp_path / "cache" / "g.onnx"
    assert ensure_cached(path, export, label="g") == path and len(made) == 1
    assert (tmp_path / "cache" / "g.onnx.sha256").is_file()
    assert ensure_cached(path, export, label="g") == path and len(made) == 1  # intact: used as is
    data = bytearray(path.read_bytes())
    data[100:108] = b"GRAPH!!!"  # damaged in place, same size
    path.write_bytes(bytes(data))
    capsys.readouterr()
    assert ensure_cached(path, export, label="g") == path and len(made) == 2  # exported again
    assert path.read_bytes() == b"graph " * 1000
    assert "does not match its recorded sha256" in capsys.readouterr().err
    (tmp_path / "cache" / "g.onnx.sha256").unlink()  # no record (a cache from an older bne): not trusted
    ensure_cached(path, export, label="g", quiet=True)
    assert len(made) == 3 and path.read_bytes() == b"graph " * 1000


@needs_torch
def test_flipped_bits_in_the_cached_graph_never_change_codes(tmp_path, monkeypatch, capsys):
    pytest.importorskip("onnxruntime")
    from bne import models
    from test_models import DOCS, TINY_BERT, make_embedder

    monkeypatch.setenv("BNE_CACHE_DIR", str(tmp_path / "cache"))
    model = make_embedder(5, TINY_BERT)
    folder = model.save_pretrained(tmp_path / "emb")
    ref = models.identify(folder)
    good = models.load(ref, backend="onnx").encode(DOCS)
    graph = models.onnx_path(ref)
    data = bytearray(graph.read_bytes())
    emb = model.state_dict()["encoder.embeddings.word_embeddings.weight"].numpy().tobytes()
    at = data.find(emb[:256])  # the word-embedding weights, as stored in the graph
    assert at > 0 and data[at : at + len(emb)] == emb
    for i in range(at + 3, at + len(emb), 4):  # a low exponent bit of every float32 (little endian)
        data[i] ^= 0x01
    with open(graph, "r+b") as f:  # in place: same size, the graph still loads
        f.write(data)
    assert graph.stat().st_size == len(data)
    capsys.readouterr()
    codes = models.load(ref, backend="onnx").encode(DOCS)
    assert np.array_equal(codes, good)  # the graph was exported again, not used as found
    assert "does not match its recorded sha256" in capsys.readouterr().err
