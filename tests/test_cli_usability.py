"""New-user friction in the bne command (issue 18, item 7): option prefixes, help texts, the time
`--help` takes, progress before the first batch and in log files, and README blocks run in order."""

from __future__ import annotations

import argparse
import io
import os
import re
import subprocess
from pathlib import Path

import pytest

import bne
from bne import cli, console
from bne import collection as bcoll
from bne.collection import Collection, Progress
from bne.corpus import Doc
from runner import run_bne, run_main, run_python
from test_collection import FakeEncoder

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


@pytest.fixture
def fake(monkeypatch):
    enc = FakeEncoder()
    monkeypatch.setattr(bcoll, "load", lambda *a, **k: enc)
    return enc


def all_parsers() -> dict[str, argparse.ArgumentParser]:
    """Every parser of the bne command: the top level, each subcommand, and train / eval's own."""
    from bne.training import evaluate, train

    top = cli.build_parser()
    subs = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    out = {"bne": top, **{f"bne {name}": p for name, p in subs.choices.items()}}
    out["bne train"] = train.build_parser()
    out["bne eval"] = evaluate.build_parser()
    return out


# -- option prefixes ------------------------------------------------------------------------------


def test_mode_is_not_read_as_model():
    """`--mode dense` was taken as `--model dense`: now it is its own option (issue 17), and a
    prefix of either is an unknown option, named."""
    args = cli.build_parser().parse_args(["search", "idx.bne", "q", "--mode", "dense"])
    assert (args.mode, args.model) == ("dense", None)
    code, _, err = run_main("search", "idx.bne", "--mod", "dense", "q")
    assert code == 2
    assert "unrecognized arguments: --mod" in err
    assert "idx.bne" not in err  # refused while parsing: no search was attempted with model 'dense'


@pytest.mark.parametrize(
    "argv", [["search", "idx.bne", "q", "--jsn"], ["verify", "idx.bne", "--json"], ["demo", "--limt", "5"]]
)
def test_an_unknown_option_shows_its_commands_usage(argv):
    """The usage line of the command given (the one that lists its options), not bne's own."""
    code, out, err = run_main(*argv)
    assert code == 2 and out == ""
    assert (
        err.startswith(f"usage: bne {argv[0]} ")
        and f"unrecognized arguments: {argv[-1 if argv[0] != 'demo' else 1]}" in err
    ), err


def _refuses(name: str, option: str, prefix: str) -> str | None:
    """None when ``prefix`` is left unparsed, else what the parser made of it."""
    p = all_parsers()[name]
    for a in p._actions:  # nothing else may fail: no required option or positional
        a.required = False
        if not a.option_strings and not isinstance(a, argparse._SubParsersAction):
            a.nargs = "*" if a.nargs in ("+", "*", argparse.REMAINDER) else "?"

    def error(message):
        raise ValueError(message)

    p.error = error  # type: ignore[method-assign]
    try:
        ns, extra = p.parse_known_args([prefix])
    except ValueError as err:
        return f"{prefix} -> error {err}"
    if extra != [prefix]:
        return f"{prefix} -> {ns}"
    return None


def test_no_prefix_of_any_long_option_is_accepted():
    taken = []
    checked = 0
    for name, parser in all_parsers().items():
        assert parser.allow_abbrev is False, name
        options = {o for a in parser._actions for o in a.option_strings}
        for opt in sorted(o for o in options if o.startswith("--")):
            for end in range(3, len(opt)):
                prefix = opt[:end]
                if prefix in options:
                    continue
                checked += 1
                bad = _refuses(name, opt, prefix)
                if bad:
                    taken.append(f"{name}: {bad}")
    assert checked > 300  # every long option of every parser, not a few
    assert not taken, taken[:5]


# -- help ----------------------------------------------------------------------------------------


def test_every_option_has_help():
    missing = []
    for name, parser in all_parsers().items():
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction) or a.help == argparse.SUPPRESS:
                continue
            if not (a.help or "").strip():
                missing.append(f"{name} {'/'.join(a.option_strings) or a.dest}")
    assert not missing, missing


def test_bench_help_explains_k_and_repeat():
    code, out, _ = run_main("bench", "--help")
    assert code == 0
    assert re.search(r"-k K\s+neighbours per query", out)
    assert re.search(r"--repeat REPEAT\s+timed runs", out)


@pytest.mark.parametrize("command,option", [("train", "--out"), ("eval", "--beir")])
def test_train_and_eval_help_do_not_import_torch(command, option):
    """`bne train --help` took 15 s: it imported torch to print its help."""
    code = (
        "import sys\nfrom bne.cli import main\n"
        f"try:\n    main([{command!r}, '--help'])\nexcept SystemExit:\n    pass\n"
        "print('TORCH', 'torch' in sys.modules, file=sys.stderr)"
    )
    out = run_python(code)
    assert option in out.stdout  # the help was printed
    assert "TORCH False" in out.stderr, out.stderr[-2000:]


# -- progress ------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_plain_lines_every_interval_when_not_a_terminal():
    out, clock = io.StringIO(), Clock()
    assert isinstance(console.progress_bar(5, "encoding", "doc", file=io.StringIO()), console.LineProgress)
    bar = console.LineProgress(50_000, "encoding", "doc", file=out, interval=10, clock=clock, ticker=False)
    for _ in range(60):  # 512 documents a second for a minute
        clock.t += 1
        bar.update(512)
    bar.update(100)  # no time passed: no line until close
    bar.close()
    lines = out.getvalue().splitlines()
    counts = [int(re.match(r"encoding: (\d+)/50000 docs, ", line).group(1)) for line in lines]  # type: ignore[union-attr]
    assert counts == [5120, 10240, 15360, 20480, 25600, 30720, 30820]  # one every 10 s, the last at close
    assert lines[0] == "encoding: 5120/50000 docs, 512 docs/s, 10s, ETA 1m27s"
    assert "\r" not in out.getvalue()


def test_plain_lines_keep_coming_while_a_batch_runs():
    """A 512-document chunk took 45 s on a loaded machine: the lines must not wait for it."""
    import time

    out = io.StringIO()
    bar = console.LineProgress(1500, "encoding", "doc", file=out, interval=0.1)
    bar.update(512)
    time.sleep(0.55)  # no update meanwhile
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) >= 2 and all(ln.startswith("encoding: 512/1500 docs, ") for ln in lines)


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_gets_the_bar():
    out = Tty()
    bar = console.progress_bar(1000, "encoding", "doc", file=out)
    assert not isinstance(bar, console.LineProgress)
    bar.update(500)
    bar.close()
    text = out.getvalue()
    assert "\r" in text and "500/1000" in text and "encoding: " in text
    assert not re.search(r"docs, \d+ docs/s", text)  # the bar, not the plain lines


def slow_load(monkeypatch, enc, seconds: float) -> None:
    import time

    def load(*a, **k):
        time.sleep(seconds)
        return enc

    monkeypatch.setattr(bcoll, "load", load)


def test_build_says_loading_then_encoding_before_the_first_batch(tmp_path, fake, monkeypatch):
    """The bar sat at `encoding: 0doc` while the model loaded and the first batch ran; in a log
    file, nothing at all was printed."""
    slow_load(monkeypatch, fake, 0.5)
    out = io.StringIO()
    seen_at_first_batch = []
    fake.on_call = lambda n: seen_at_first_batch.append(out.getvalue()) if not seen_at_first_batch else None
    bar = console.ProgressBar(False, model="model fake", file=out, interval=0.1)
    with Collection.create(tmp_path / "c.bne") as c:
        c.add([Doc(f"d{i}", f"document {i}") for i in range(1200)], progress=bar, commit_every=500)
    bar.close()
    first = seen_at_first_batch[0].splitlines()
    assert re.fullmatch(r"bne: loading model fake, \d+s", first[0])  # a line every interval while it loads
    assert all(ln.startswith("bne: loading model fake, ") for ln in first[:-1])
    assert first[-1].startswith("encoding: 0")  # the model is ready: encoding, before the first batch is done
    lines = [ln for ln in out.getvalue().splitlines() if ln.startswith("encoding: ")]
    counts = [int(re.match(r"encoding: (\d+)", ln).group(1)) for ln in lines]  # type: ignore[union-attr]
    assert counts == sorted(counts) and counts[0] == 0 and counts[-1] == 1200  # the fake encodes in < 0.1 s
    assert lines[-1].startswith("encoding: 1200/1200 docs, ") and lines[-1].endswith("(1200 committed)")


def test_terminal_build_says_loading_once_then_shows_the_bar(tmp_path, fake, monkeypatch):
    slow_load(monkeypatch, fake, 0.4)
    monkeypatch.setattr(console, "LOADING_GRACE_S", 0.05)
    out = Tty()
    bar = console.ProgressBar(False, model="model fake", file=out)
    with Collection.create(tmp_path / "c.bne") as c:
        c.add([Doc(f"d{i}", f"document {i}") for i in range(700)], progress=bar)
    bar.close()
    text = out.getvalue()
    assert text.startswith("bne: loading model fake\n") and text.count("loading") == 1
    assert "\r" in text and "700/700" in text and not re.search(r"docs, \d+ docs/s", text)


def test_bne_build_to_a_log_file_prints_progress_lines(tmp_path, fake, monkeypatch):
    """With stderr not a terminal, `bne build` printed nothing until the end."""
    monkeypatch.setattr(console, "INTERVAL", 0.0)
    (tmp_path / "docs.txt").write_text("".join(f"line number {i}\n" for i in range(1500)))
    code, _, err_text = run_main("build", tmp_path / "docs.txt", "-o", tmp_path / "d.bne", "--commit-every", "600")
    assert code == 0, err_text
    err = err_text.splitlines()
    assert all(ln.startswith(("bne: loading model default (1024 bits), ", "encoding: ")) for ln in err), err
    counts = [int(m.group(1)) for ln in err if (m := re.match(r"encoding: (\d+)(?:/1500)? docs, \d+ docs/s", ln))]
    assert len(set(counts)) >= 3 and counts == sorted(counts) and counts[-1] == 1500


def test_quiet_build_prints_no_progress(tmp_path, fake, monkeypatch):
    monkeypatch.setattr(console, "INTERVAL", 0.0)
    (tmp_path / "docs.txt").write_text("a\nb\n")
    code, out, err = run_main("build", tmp_path / "docs.txt", "-o", tmp_path / "d.bne", "-q")
    assert code == 0 and err == "" and "2 codes" in out


def test_progress_reports_before_the_first_chunk(tmp_path, fake):
    seen: list[Progress] = []
    calls = []
    fake.on_call = lambda n: calls.append(len(seen))
    with Collection.create(tmp_path / "c.bne") as c:
        c.add([Doc(f"d{i}", f"doc {i}") for i in range(10)], progress=seen.append)
    assert calls[0] == 1 and seen[0].encoded == 0  # "the model is ready" before any encoding


def test_encoder_progress_is_plain_lines_in_a_log(monkeypatch, capsys):
    """`bne eval` encodes through Encoder.embed: in a log file it printed nothing until the end."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from bne.encoder import Encoder, available_heads

    if "minilm-l6-1024" not in available_heads():
        pytest.skip("the default 1024-bit head is not shipped in this checkout")
    monkeypatch.setattr(console, "INTERVAL", 0.0)
    Encoder.default(1024).embed([f"sentence {i}" for i in range(12)], batch_size=4, show_progress=True)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("embedding: ")]
    counts = [int(re.match(r"embedding: (\d+)/12 texts, ", ln).group(1)) for ln in lines]  # type: ignore[union-attr]
    assert counts == sorted(counts) and {4, 8, 12} <= set(counts) and counts[-1] == 12


# -- README --------------------------------------------------------------------------------------


def test_readme_load_comment_says_what_the_call_returns():
    """The comment on `load("default", 1024)` said bulk/OpenVINO; the call gives the query encoder."""
    import inspect

    from bne.encoder.runtime import default_cpu_backend, load

    line = next(ln for ln in README.splitlines() if ln.startswith('enc = load("default", 1024)'))
    purpose = inspect.signature(load).parameters["purpose"].default
    backend, _ = default_cpu_backend(purpose)
    names = {"onnx": "ONNX Runtime", "openvino": "OpenVINO"}
    assert purpose == "query" and "queries" in line
    assert names[backend] in line and all(n not in line for b, n in names.items() if b != backend)


def test_readme_quickstart_then_collection_block_in_one_folder(tmp_path, fake, monkeypatch, capsys):
    """The README's order: the Quickstart's commands, then the Python Collection block, in the
    same folder (it failed: the Quickstart had already made its file)."""
    monkeypatch.chdir(tmp_path)
    quick = re.search(r"<!-- quickstart -->\s*```(?:bash|sh)?\n(.*?)```", README, re.S)
    block = re.search(r"<!-- collection -->\s*```python\n(.*?)```", README, re.S)
    assert quick and block
    assert README.index("<!-- quickstart -->") < README.index("<!-- collection -->")
    import shlex

    for line in quick.group(1).splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        argv = shlex.split(line)
        if argv[0] == "bne":
            assert run_main(*argv[1:])[0] == 0, line
        else:
            assert subprocess.run(line, shell=True, cwd=tmp_path).returncode == 0, line
    capsys.readouterr()
    exec(compile(block.group(1), "README.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    docs = (tmp_path / "docs.txt").read_text().splitlines()
    assert out[0] == f"{len(docs)} 0" and len(out) == 4
    assert {ln.split(" ", 3)[3] for ln in out[1:]} <= set(docs)
    assert len(bne.open(tmp_path / "docs.bne")) == len(docs) + 1  # the Quickstart's index, untouched


def test_threads_is_a_whole_number_and_clamped_to_the_cpus_this_process_may_use(tmp_path):
    code, _, err = run_main("search", str(tmp_path / "none.bne"), "q", "--threads", "many")
    assert code == 2 and "expected a whole number, got 'many'" in err
    # one CPU allowed (as under taskset or a cpuset): the note names 1, not the machine's count
    out = run_bne(
        "search", str(tmp_path / "none.bne"), "q", "--threads", "2", preexec_fn=lambda: os.sched_setaffinity(0, {0})
    )
    assert "bne: note: --threads 2 is more than the 1 CPUs here; using 1" in out.stderr
    assert out.returncode == 2 and "none.bne" in out.stderr.splitlines()[-1]
