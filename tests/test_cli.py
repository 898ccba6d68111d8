"""The bne command, driven as a user would drive it (subprocess), error cases included."""

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

import bne
from runner import needs_encoder, run_bne

ROOT = Path(__file__).resolve().parents[1]
DOCS = [
    "The cat sat on the mat and purred.",
    "A dog barked loudly at the mailman.",
    "Stock markets fell sharply after the announcement.",
    "The kitten slept on a warm rug by the fire.",
    "Central banks raised interest rates again.",
    "How to bake sourdough bread at home.",
]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    needs_encoder()
    d = tmp_path_factory.mktemp("cli")
    (d / "docs.txt").write_text("\n".join(DOCS) + "\n")
    out = run_bne("build", d / "docs.txt", "-o", d / "docs.bne", "-q", check=True)
    assert "6 codes of 1024 bits" in out.stdout
    return d


def test_build_search_info_verify(built):
    d = built
    out = run_bne("search", d / "docs.bne", "a small cat sleeping", "-k", "2", check=True)
    lines = [line for line in out.stdout.splitlines() if re.match(r"\s+\d+\.", line)]
    assert len(lines) == 2 and ("cat" in out.stdout or "kitten" in out.stdout)
    assert re.search(r"encode [\d.]+ ms, search [\d.]+ ms", out.stderr)
    out = run_bne(
        "search", d / "docs.bne", "--json", "-k", "3", "--queries", "-", input="interest rates\nbread\n", check=True
    )
    res = json.loads(out.stdout)
    assert [r["query"] for r in res["results"]] == ["interest rates", "bread"]
    assert res["results"][0]["hits"][0]["snippet"].startswith("Central banks")
    assert res["results"][1]["hits"][0]["snippet"].startswith("How to bake")
    assert all(h["distance"] >= 0 for h in res["results"][0]["hits"])
    out = run_bne("search", d / "docs.bne", "interest rates", "--rescore", "5", "--json", check=True)
    assert json.loads(out.stdout)["results"][0]["hits"][0]["snippet"].startswith("Central banks")
    info = json.loads(run_bne("info", d / "docs.bne", "--json", check=True).stdout)
    assert (
        info["bits"] == 1024 and info["live"] == 6 and info["documents"] == 6 and info["metadata"]["model"] == "default"
    )
    assert "every checksum matches" in run_bne("verify", d / "docs.bne", check=True).stdout


def test_append_skips_known_documents(built, tmp_path):
    d = built
    more = tmp_path / "more.txt"
    more.write_text("\n".join(DOCS + ["Quantum computers use qubits."]) + "\n")
    out = run_bne("build", more, "-o", d / "docs.bne", "--append", "-q", check=True)
    assert "1 added, 6 already present" in out.stdout
    assert len(bne.open(d / "docs.bne")) == 7
    out = run_bne("build", more, "-o", d / "docs.bne", "--append", "--bits", "2048", "-q")
    assert (
        out.returncode == 2
        and "was built with model 'default' at 1024 bits; asked for 'default' at 2048 bits" in out.stderr
    )


def test_verify_fails_on_damage(built, tmp_path):
    damaged = tmp_path / "damaged.bne"
    data = bytearray((built / "docs.bne").read_bytes())
    data[3 * 4096 + 5] ^= 0xFF  # inside the codes
    damaged.write_bytes(bytes(data))
    out = run_bne("verify", damaged)
    assert out.returncode == 1 and "checksum mismatch" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize(
    "args,message",
    [
        (["build", "missing.txt", "-o", "x.bne"], "input not found: missing.txt"),
        (["build", "empty.txt", "-o", "x.bne"], "empty corpus: no documents in empty.txt"),
        (["build", "doc.pdf", "-o", "x.bne"], "unknown input format '.pdf'"),
        (["build", "folder", "-o", "x.bne"], "is a folder but not a BEIR dataset"),
        (["search", "bad.bne", "hello"], "wrong magic"),
        (["info", "missing.bne"], "No such file or directory"),
        (["build", "one.txt", "-o", "x.bne", "--model", "nope.safetensors"], "model not found: nope.safetensors"),
    ],
)
def test_user_errors_are_one_line(tmp_path, args, message):
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "doc.pdf").write_bytes(b"%PDF-1.4")
    (tmp_path / "one.txt").write_text("hello\n")
    (tmp_path / "folder").mkdir()
    (tmp_path / "bad.bne").write_bytes(b"not an index at all")
    out = run_bne(*args, cwd=tmp_path)
    assert out.returncode != 0
    assert message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    debug = run_bne("--debug", *args, cwd=tmp_path)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_jsonl_tsv_csv_corpora_give_ids_titles_and_texts(tmp_path):
    from bne.corpus import read_corpus

    (tmp_path / "a.jsonl").write_text(
        '{"_id": "d1", "title": "T", "text": "hello", "year": 2020}\n\n{"id": 7, "text": "x"}\n'
    )
    (tmp_path / "a.tsv").write_text("id\ttitle\ttext\nq1\tTitle\tsome text\n")
    (tmp_path / "a.csv").write_text('k1,"a, quoted text"\n')
    docs = list(read_corpus(tmp_path / "a.jsonl"))
    assert [(d.ext_id, d.title, d.text) for d in docs] == [("d1", "T", "hello"), ("7", "", "x")]
    assert json.loads(docs[0].meta) == {"year": 2020}
    assert [(d.ext_id, d.title, d.text) for d in read_corpus(tmp_path / "a.tsv")] == [("q1", "Title", "some text")]
    assert [(d.ext_id, d.text) for d in read_corpus(tmp_path / "a.csv")] == [("k1", "a, quoted text")]
    (tmp_path / "beir").mkdir()
    (tmp_path / "beir" / "corpus.jsonl").write_text('{"_id": "a", "text": "b"}\n')
    assert [d.ext_id for d in read_corpus(tmp_path / "beir")] == ["a"]


def test_corpus_json_errors_name_the_line(tmp_path):
    from bne.corpus import CorpusError, read_corpus

    for line, problem in (('{"text": "a"', "Expecting"), ('{"text": "a", "n": ' + "1" * 5000 + "}", "4300 digits")):
        (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n' + line + "\n")
        with pytest.raises(CorpusError, match=rf"bad.jsonl:2: not valid JSON \(.*{problem}"):
            list(read_corpus(tmp_path / "bad.jsonl"))


def test_bench_writes_table_json_and_plot(tmp_path):
    pytest.importorskip("faiss")
    out = run_bne("bench", "--sizes", "1k,3000", "--repeat", "1", "--queries", "4", "--out", tmp_path / "b", check=True)
    assert "bne 1024 vs FAISS binary 1024" in out.stdout
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["sizes"] == [1000, 3000]
    assert set(data["ms"]) >= {"float32 IndexFlatIP", "INT8 IndexScalarQuantizer", "bne 2048"}
    if "matplotlib" in out.stdout or (tmp_path / "b.png").exists():
        assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"


def readme_quickstart():
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- quickstart -->\s*```(?:bash|sh)?\n(.*?)```", text, re.S)
    assert m, "README has no quickstart block"
    return [line for line in m.group(1).splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_readme_quickstart_runs(tmp_path):
    """The README's quickstart, command by command, so the README cannot drift from the code."""
    needs_encoder()
    for line in readme_quickstart():
        if line.startswith("pip install"):
            continue  # installing is what CI itself does first
        argv = shlex.split(line)
        assert argv[0] in ("bne", "printf", "echo"), line
        if argv[0] == "bne":
            out = run_bne(*argv[1:], cwd=tmp_path)
        else:
            out = subprocess.run(line, shell=True, cwd=tmp_path, capture_output=True, text=True)
        assert out.returncode == 0, f"{line}\n{out.stderr[-2000:]}"
        if argv[:2] == ["bne", "search"]:  # the effect, not just the exit code
            assert "cat" in out.stdout or "kitten" in out.stdout, out.stdout
    # the last line appended more.txt: its document is in the index, the docstore and the results
    added = [line for line in (tmp_path / "more.txt").read_text().splitlines() if line.strip()]
    assert len(bne.open(tmp_path / "docs.bne")) == 5 and len(added) == 1
    out = run_bne("search", "docs.bne", added[0], "-k", "1", "--json", cwd=tmp_path, check=True)
    assert json.loads(out.stdout)["results"][0]["hits"][0]["snippet"] == added[0]
    out = run_bne("info", "docs.bne", "--json", cwd=tmp_path, check=True)
    assert json.loads(out.stdout)["documents"] == 5
