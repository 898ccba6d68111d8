"""bne.models: which model built an index, and where its files are now.

Tiny random models made here (a head on the shipped all-MiniLM-L6-v2, a BinaryEmbedder folder, a
``bne train --full``-style file, a seed-style ``.pt`` state dict) each build and search an index
through the command line, are moved, and are found again. Everything runs in a private cache
(BNE_CACHE_DIR), so the registry and the ONNX exports start empty.
"""

import json
import os
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")

from bne import models  # noqa: E402
from bne.errors import ModelError, ModelNotFoundError  # noqa: E402
from runner import run_bne  # noqa: E402

DOCS = [
    "The cat sat on the mat and purred.",
    "A dog barked loudly at the mailman.",
    "Stock markets fell sharply after the announcement.",
    "The kitten slept on a warm rug by the fire.",
]
#: A BERT far smaller than bert-mini, with the BERT uncased vocabulary bne tokenizes with.
TINY_BERT = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "vocab_size": 30522,
    "max_position_embeddings": 512,
}


def env(cache):
    return dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", BNE_CACHE_DIR=str(cache))


def bne(cache, *args, check=False, input=None):
    """``bne ARGS`` with ``cache`` as its model cache and registry."""
    return run_bne(*args, env={"BNE_CACHE_DIR": str(cache)}, check=check, input=input, timeout=600)


def one_line_error(out, *needles):
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bne: error: "), out.stderr
    assert "Traceback" not in out.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def top_hits(cache, index, queries):
    """(snippet, distance) of each query's nearest document."""
    out = bne(
        cache, "search", index, "-k", "1", "--json", "--queries", "-", input="\n".join(queries) + "\n", check=True
    )
    return [(r["hits"][0]["snippet"], r["hits"][0]["distance"]) for r in json.loads(out.stdout)["results"]]


def top_hit(cache, index, query):
    return top_hits(cache, index, [query])[0][0]


def make_embedder(seed, config, bits=1024):
    from bne.encoder.model import BinaryEmbedder

    torch.manual_seed(seed)
    return BinaryEmbedder(bits, config=dict(config)).eval()


def write_head(path, bits=1024, seed=0, **cfg):
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    sd = {
        "projection.0.weight": torch.randn(bits, 384, generator=g) / 20,
        "projection.0.bias": torch.zeros(bits),
        "projection.1.weight": torch.ones(bits),
        "projection.1.bias": torch.zeros(bits),
    }
    save_file(sd, str(path))
    conf = {"bits": bits, "backbone": "all-MiniLM-L6-v2", "pooling": "mean", "normalize": True, "max_length": 64}
    path.with_suffix(".json").write_text(json.dumps({**conf, **cfg}))
    return path


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """(cache folder, {kind of model: its path}) with each model in a folder of its own."""
    from bne.encoder.model import save_safetensors

    d = tmp_path_factory.mktemp("zoo")
    cache = d / "cache"
    made = {}
    made["head"] = write_head(_mk(d / "head") / "myhead.safetensors")
    made["folder"] = make_embedder(1, TINY_BERT).save_pretrained(d / "folder" / "my-embedder")
    full = make_embedder(2, TINY_BERT)  # as `bne train --full --out full` writes it: OUT.safetensors + OUT.json
    save_safetensors({k: v.contiguous() for k, v in full.state_dict().items()}, _mk(d / "full") / "full.safetensors")
    (d / "full" / "full.json").write_text(
        json.dumps(
            {"bits": 1024, "binary_dim": 1024, "backbone": dict(TINY_BERT), "normalize": False, "max_length": 64}
        )
    )
    made["full"] = d / "full" / "full.safetensors"
    # The seed layout: a bare torch state dict, no config (the shape is read off the weights; heads = hidden / 64)
    seed_cfg = dict(TINY_BERT, hidden_size=64, num_attention_heads=1, intermediate_size=128)
    torch.save(make_embedder(3, seed_cfg).state_dict(), _mk(d / "seed") / "binary_embedder_1024.pt")
    made["seed"] = d / "seed" / "binary_embedder_1024.pt"
    (d / "docs.txt").write_text("\n".join(DOCS) + "\n")
    return cache, made


def _mk(p):
    p.mkdir(parents=True, exist_ok=True)
    return p


@pytest.fixture
def use_cache(zoo, monkeypatch):
    monkeypatch.setenv("BNE_CACHE_DIR", str(zoo[0]))
    return zoo[0]


# -- every kind of model builds and searches, then is moved and found again -------------------------


@pytest.mark.parametrize("kind", ["head", "folder", "full", "seed"])
def test_build_search_move_and_find_again(zoo, kind, tmp_path, use_cache):
    import bne as bne_api

    cache, made = zoo
    src = made[kind]
    model = tmp_path / "models" / src.name
    if src.is_dir():
        shutil.copytree(src, model)
    else:
        _copy_model_file(src, model)
    index = tmp_path / "idx" / "docs.bne"
    index.parent.mkdir()
    out = bne(cache, "build", src.parents[1] / "docs.txt", "-o", index, "--model", model, "-q", check=True)
    assert "4 codes of 1024 bits" in out.stdout
    with bne_api.open(str(index)) as idx:
        meta = dict(idx.metadata)
    ref = models.identify(model)  # the same hash as the index records, from another process
    assert meta["model"] == model.stem and meta["model_sha256"] == ref.sha256
    assert meta["model_kind"] == ("head" if kind == "head" else "embedder")
    # a document's own text is its nearest neighbour, at distance ~0 (build may run OpenVINO bf16 for
    # heads where the CPU has it: 99.8 % of bits equal to the fp32 query path)
    hits = top_hits(cache, index, DOCS)
    assert [h[0] for h in hits] == DOCS and all(h[1] <= 10 for h in hits), hits

    moved = tmp_path / "elsewhere" / model.name
    moved.parent.mkdir()
    _move_model(model, moved)
    msg = one_line_error(bne(cache, "search", index, DOCS[1]), repr(model.stem), ref.sha256[:12], "bne models add")
    assert str(model) in msg  # where it was last seen
    if kind in ("head", "seed"):
        out = bne(cache, "models", "add", moved, check=True)
        assert ref.sha256[:12] in out.stdout and str(moved) in out.stdout
        listed = json.loads(bne(cache, "models", "--json", check=True).stdout)
        assert {"name": model.stem, "sha256": ref.sha256, "path": str(moved)}.items() <= next(
            r for r in listed if r["sha256"] == ref.sha256
        ).items()
    else:
        assert models.identify(moved) == ref  # registers the new place
    assert top_hit(cache, index, DOCS[1]) == DOCS[1]


def _copy_model_file(src, dst):
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst)
    if src.with_suffix(".json").is_file():
        shutil.copy2(src.with_suffix(".json"), dst.with_suffix(".json"))


def _move_model(src, dst):
    os.rename(src, dst)
    if src.suffix and src.with_suffix(".json").is_file():
        os.rename(src.with_suffix(".json"), dst.with_suffix(".json"))


def test_model_beside_the_index_is_found_without_the_registry(zoo, tmp_path, use_cache):
    cache, made = zoo
    model = make_embedder(12, TINY_BERT).save_pretrained(tmp_path / "a" / "kept")  # known nowhere else
    index = tmp_path / "docs.bne"
    bne(cache, "build", made["head"].parents[1] / "docs.txt", "-o", index, "--model", model, "-q", check=True)
    shutil.move(model, tmp_path / "kept")  # next to the index now, and the registry's path is stale
    assert top_hit(cache, index, DOCS[2]) == DOCS[2]
    assert models.resolve(models.identify(tmp_path / "kept", remember=False)) == tmp_path / "kept"  # registered


def test_identify_by_name_after_registering(zoo, use_cache, tmp_path):
    _, made = zoo
    model = shutil.copytree(made["folder"], tmp_path / "named-model")
    ref = models.identify(model)
    assert models.identify("named-model") == ref  # a registered name works where a path does
    assert models.identify("named-model", 1024).kind == "embedder"


# -- codes: the torch-free graph agrees with the torch model ------------------------------------------


@pytest.mark.parametrize("kind", ["folder", "seed"])
def test_embedder_onnx_codes_agree_with_torch(zoo, use_cache, kind):
    from bne.encoder.encoder import Encoder
    from bne.encoder.export import CHECK_TEXTS
    from bne.encoder.model import BinaryEmbedder, default_tokenizer

    path = zoo[1][kind]
    ref = models.identify(path)
    enc = models.load(ref)
    assert enc.backend == "onnx" and models.onnx_path(ref).is_file()
    texts = DOCS + CHECK_TEXTS + [f"query number {i} about cats, dogs and markets" for i in range(40)]
    torch_enc = Encoder(BinaryEmbedder.from_pretrained(path), default_tokenizer(), max_length=enc.max_length)
    a, b = enc.encode(texts), torch_enc.encode(texts)
    agree = np.mean(np.unpackbits(a) == np.unpackbits(b))
    assert agree >= 0.999, agree
    # project() reads the embedder's own head: the same codes from the float features
    feats = enc.embed(texts, normalize=False)
    assert np.mean(np.unpackbits(enc.project(feats)) == np.unpackbits(a)) >= 0.999


# -- what is not a model, or not this model --------------------------------------------------------


def test_not_a_model_is_one_line_and_writes_nothing(zoo, tmp_path):
    cache, made = zoo
    docs = made["head"].parents[1] / "docs.txt"
    rng = np.random.default_rng(0)
    (tmp_path / "junk.safetensors").write_bytes(rng.bytes(4096))
    (tmp_path / "junk.pt").write_bytes(b"PK\x03\x04" + rng.bytes(4096))  # looks like torch.save's zip, is not
    (tmp_path / "notes.txt").write_text("not a model\n")
    (tmp_path / "empty").mkdir()
    for bad, says in [
        ("junk.safetensors", "not a model"),
        ("junk.pt", "not a readable torch state dict"),
        ("notes.txt", "not a model"),
        ("empty", "folder without model weights"),
        ("missing.safetensors", "model not found"),
    ]:
        out = bne(cache, "build", docs, "-o", tmp_path / "x.bne", "--model", tmp_path / bad, "-q")
        one_line_error(out, says)
        assert not (tmp_path / "x.bne").exists()


def test_other_weights_are_not_a_model(use_cache, tmp_path):
    from safetensors.numpy import save_file

    save_file({"weight": np.zeros((4, 4), np.float32)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ModelError, match="not a bne model"):
        models.identify(tmp_path / "other.safetensors")
    wide = write_head(tmp_path / "wide.safetensors")
    from safetensors.torch import save_file as save_torch

    save_torch(
        {
            "projection.0.weight": torch.zeros(64, 256),
            **{k: torch.zeros(64) for k in ("projection.0.bias", "projection.1.weight", "projection.1.bias")},
        },
        str(wide),
    )
    with pytest.raises(ModelError, match="256-wide backbone"):
        models.identify(wide)


def test_wrong_bits_is_a_clear_error(zoo, use_cache, tmp_path):
    cache, made = zoo
    with pytest.raises(ModelError, match="makes 1024-bit codes, but 2048 bits"):
        models.identify(made["seed"], 2048)
    out = bne(
        cache,
        "build",
        made["head"].parents[1] / "docs.txt",
        "-o",
        tmp_path / "x.bne",
        "--bits",
        "2048",
        "--model",
        made["folder"],
        "-q",
    )
    one_line_error(out, "1024-bit codes")
    head = write_head(tmp_path / "h.safetensors", bits=1024, seed=5)
    head.with_suffix(".json").write_text(json.dumps({"bits": 2048}))
    with pytest.raises(ModelError, match="config says 2048 bits"):
        models.identify(head)
    odd = make_embedder(4, TINY_BERT, bits=96).save_pretrained(tmp_path / "odd")
    with pytest.raises(ModelError, match="multiple of 64"):
        models.identify(odd)


def test_unknown_model_names_itself_and_the_fix(use_cache):
    ref = models.ModelRef("gone-model", "ab" * 32, "embedder", 1024)
    with pytest.raises(ModelNotFoundError, match=r"'gone-model' \(sha256 abababababab.*bne models add PATH"):
        models.resolve(ref)
    with pytest.raises(ModelNotFoundError):
        models.load(ref)


def test_stale_registry_path_is_not_used(use_cache, tmp_path):
    head = write_head(tmp_path / "h.safetensors", seed=7)
    ref = models.identify(head)
    assert models.resolve(ref) == head.resolve()
    write_head(head, seed=8)  # another model now sits where this one was
    with pytest.raises(ModelNotFoundError, match="last seen at"):
        models.resolve(ref)
    assert models.identify(head).sha256 != ref.sha256


def test_same_content_same_identity(use_cache, tmp_path):
    a = write_head(tmp_path / "a.safetensors", seed=9)
    b = tmp_path / "sub" / "b.safetensors"
    _copy_model_file(a, b)
    ra, rb = models.identify(a), models.identify(b)
    assert ra.sha256 == rb.sha256 and models.same_model(ra, rb) and (ra.name, rb.name) == ("a", "b")
    b.with_suffix(".json").write_text(json.dumps({"bits": 1024, "normalize": False}))  # the config decides codes too
    assert models.identify(b).sha256 != ra.sha256


def test_damaged_registry_reads_as_empty(use_cache, tmp_path):
    models.registry_path().parent.mkdir(parents=True, exist_ok=True)
    models.registry_path().write_text("{not json")
    head = write_head(tmp_path / "h.safetensors", seed=10)
    ref = models.identify(head)  # rewrites the registry
    assert models.resolve(ref) == head.resolve()
    assert json.loads(models.registry_path().read_text())["models"][ref.sha256]["name"] == "h"


# -- index metadata, old and new -------------------------------------------------------------------


def test_metadata_round_trip_and_old_indexes(use_cache):
    ref = models.identify("default", 1024)
    assert ref.name == "default" and ref.kind == "head"
    assert models.ModelRef.from_metadata(ref.to_metadata()) == ref
    assert models.ModelRef.from_metadata({"bits": 1024}) is None
    old = models.ModelRef.from_metadata({"model": "default", "bits": 1024})
    assert old.sha256 == "" and models.resolve(old) == models.resolve(ref)
    assert models.same_model(old, ref) is True
    old_path = models.ModelRef.from_metadata({"model": "/nowhere/h.safetensors", "bits": 1024})
    assert old_path.name == "h" and models.same_model(old_path, ref) is None
    with pytest.raises(ModelNotFoundError, match="/nowhere/h.safetensors"):
        models.resolve(old_path)
    with pytest.raises(ModelError, match="invalid model_sha256"):
        models.ModelRef.from_metadata({"model": "x", "model_sha256": "zz", "bits": 1024})


def test_index_built_before_model_hashes_still_searches(zoo, tmp_path, use_cache):
    """An index whose metadata says model = <absolute path of a head> (as bne wrote before) searches."""
    import bne as bne_api
    from bne.docstore import DocStore

    cache, made = zoo
    head = made["head"]
    enc = models.load(models.identify(head))
    idx = bne_api.open(str(tmp_path / "old.bne"), mode="a", bits=1024, metadata={"model": str(head), "bits": 1024})
    ids = np.arange(len(DOCS), dtype=np.int64)
    store = DocStore(str(tmp_path / "old.bne"), create=True)
    from bne.corpus import read_corpus

    store.insert(ids, list(read_corpus(head.parents[1] / "docs.txt")))
    store.commit()
    idx.add(enc.encode(DOCS), ids=ids)
    idx.commit()
    idx.close()
    store.close()
    assert top_hit(cache, tmp_path / "old.bne", DOCS[3]) == DOCS[3]
    other = write_head(tmp_path / "other.safetensors", seed=11)
    one_line_error(bne(cache, "search", tmp_path / "old.bne", "cat", "--model", other), "was built with model")


def test_append_with_another_model_is_refused(zoo, tmp_path):
    cache, made = zoo
    docs = made["head"].parents[1] / "docs.txt"
    bne(cache, "build", docs, "-o", tmp_path / "x.bne", "--model", made["full"], "-q", check=True)
    out = bne(cache, "build", docs, "-o", tmp_path / "x.bne", "--model", made["folder"], "--append", "-q")
    one_line_error(out, "was built with model 'full' at 1024 bits; asked for 'my-embedder' at 1024 bits")
    out = bne(cache, "build", docs, "-o", tmp_path / "x.bne", "--model", made["full"], "--append", "-q", check=True)
    assert "0 added, 4 already present" in out.stdout


def test_names_from_an_index_stay_in_its_folder(use_cache, tmp_path):
    head = write_head(tmp_path / "h.safetensors", seed=13)
    ref = models.identify(head, remember=False)  # known only by being beside the "index"
    (tmp_path / "idx").mkdir()
    sneaky = models.ModelRef("../h", ref.sha256, "head", 1024)
    with pytest.raises(ModelNotFoundError):
        models.resolve(sneaky, search_dirs=[tmp_path / "idx"])
    assert models.resolve(ref, search_dirs=[tmp_path]) == head


def test_embedder_without_onnx_runtime_falls_back_to_torch(zoo, use_cache, monkeypatch):
    from bne.encoder import backend as runtime

    ref = models.identify(zoo[1]["full"])
    onnx_codes = models.load(ref).encode(DOCS)
    monkeypatch.setattr(runtime, "onnx_available", lambda: False)
    enc = models.load(ref)
    assert enc.backend == "torch" and enc.max_length == 64  # full.json's max_length
    assert np.mean(np.unpackbits(enc.encode(DOCS)) == np.unpackbits(onnx_codes)) >= 0.999


def test_damaged_cached_graph_is_exported_again(zoo, use_cache, capsys):
    ref = models.identify(zoo[1]["folder"])
    good = models.load(ref).encode(DOCS)
    models.onnx_path(ref).write_bytes(b"not an onnx graph")
    enc = models.load(ref)
    assert "exporting it again" in capsys.readouterr().err
    assert np.array_equal(enc.encode(DOCS), good)
