"""The public API's names: one spelling each (old ones warn), every public name in dir(bne),
``from bne import *`` numpy-only, exceptions in bne.errors, kernel names that round-trip."""

import ast
import inspect
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import bne
import bne.errors
from reference import random_codes

PKG = Path(bne.__file__).parent


def test_pack_unpack_old_bitorder_keyword_warns_and_gives_the_same_codes(rng):
    x = rng.standard_normal((5, 70)).astype(np.float32)
    for order in ("big", "little"):
        want = bne.pack(x, bit_order=order)
        with pytest.warns(DeprecationWarning, match=r"pack\(bitorder=\.\.\.\) is deprecated; use bit_order"):
            old = bne.pack(x, bitorder=order)
        np.testing.assert_array_equal(old, want)
        with pytest.warns(DeprecationWarning, match=r"unpack\(bitorder=\.\.\.\) is deprecated"):
            back = bne.unpack(old, 70, bitorder=order)
        np.testing.assert_array_equal(back, bne.unpack(want, 70, bit_order=order))
        np.testing.assert_array_equal(back, np.where(x > 0, 1, -1))
    # the two orders really differ, so the keyword is not ignored
    assert not np.array_equal(bne.pack(x, bit_order="big"), bne.pack(x, bit_order="little"))


def test_bad_bit_order_is_one_message_for_pack_and_save(tmp_path):
    with pytest.raises(ValueError, match="bit_order must be 'big'.*got 'middle'"):
        bne.pack(np.ones((1, 8)), bit_order="middle")
    index = bne.Index(64)
    index.add(np.zeros((1, 8), np.uint8))
    with pytest.raises(ValueError, match="bit_order must be 'big'.*got 'middle'"):
        index.save(tmp_path / "x.bne", bit_order="middle")
    assert not list(tmp_path.iterdir())


def test_old_rescore_name_warns_and_is_rescore_candidates():
    import bne.encoder
    from bne.encoder.base import rescore_candidates

    with pytest.warns(DeprecationWarning, match="use bne.encoder.rescore_candidates"):
        old = bne.encoder.rescore
    assert old is rescore_candidates is bne.encoder.rescore_candidates
    assert "rescore" not in bne.encoder.__all__
    with pytest.warns(DeprecationWarning):  # warns on every use, not only the first
        assert bne.encoder.rescore is rescore_candidates


def test_open_has_the_parameters_of_mapped_index(tmp_path, rng):
    assert inspect.signature(bne.open).parameters == inspect.signature(bne.MappedIndex).parameters
    assert list(inspect.signature(bne.open).parameters)[:2] == ["path", "mode"]
    path = tmp_path / "x.bne"
    with bne.open(path, "a", bits=128, metadata={"m": 1}, bit_order="little") as w:
        w.add(random_codes(rng, 3, 128))
    r = bne.open(path, verify=True, expect_bits=128)
    assert isinstance(r, bne.MappedIndex)
    assert (len(r), r.bit_order, r.metadata) == (3, "little", {"m": 1})
    with pytest.raises(TypeError, match="nonsense"):
        bne.open(path, nonsense=1)
    assert bne.mapped.MappedIndex is bne.MappedIndex and bne.mapped.open is bne.open


def test_dir_lists_lazy_names_and_star_import_stays_numpy_only():
    lazy = {"Collection", "Encoder", "BinaryEmbedder", "OpenVinoEncoder", "read_corpus", "doc_text", "Doc"}
    assert lazy <= set(dir(bne))
    assert set(bne.__all__) <= set(dir(bne))
    assert not lazy & set(bne.__all__)
    code = (
        "import sys\n"
        "from bne import *\n"
        "heavy = ('torch', 'transformers', 'onnxruntime', 'openvino', 'sqlite3', 'bne.collection', 'bne.encoder',"
        " 'bne.corpus')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m in heavy))\n"
        "print(sorted(n for n in ('Index', 'open', 'ResultTooLargeError', 'Collection', 'Encoder') "
        " if n in globals()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    loaded, names = out.stdout.splitlines()
    assert loaded == "[]"
    assert names == "['Index', 'ResultTooLargeError', 'open']"


def test_lazy_names_resolve_to_their_classes():
    from bne import corpus

    assert bne.read_corpus is corpus.read_corpus and bne.doc_text is corpus.doc_text
    runtime = pytest.importorskip("bne.encoder.runtime")
    assert bne.OpenVinoEncoder is runtime.OpenVinoEncoder
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        bne.Nope  # noqa: B018


def test_result_too_large_error_is_exported_and_raised(monkeypatch, rng):
    assert bne.ResultTooLargeError is bne.errors.ResultTooLargeError
    assert "ResultTooLargeError" in bne.__all__
    monkeypatch.setenv("BNE_MAX_RESULT_BYTES", "1000")
    codes = random_codes(rng, 10, 64)
    with pytest.raises(bne.ResultTooLargeError, match="result limit"):
        bne.knn(codes, codes, k=10)  # 10 x 10 x 12 bytes > 1000
    monkeypatch.setenv("BNE_MAX_RESULT_BYTES", "1200")
    assert bne.knn(codes, codes, k=10)[0].shape == (10, 10)


def test_every_exception_class_lives_in_bne_errors():
    """bne.errors is the one home of bne's exceptions (the CLI's internal usage error aside)."""
    outside = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).as_posix()
        if rel in ("errors.py", "cli.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                isinstance(b, ast.Name) and (b.id.endswith(("Error", "Exception")) or b.id == "Warning")
                for b in node.bases
            ):
                outside.append(f"{rel}:{node.name}")
    assert outside == []
    errors = [v for v in vars(bne.errors).values() if isinstance(v, type) and issubclass(v, Exception)]
    assert len(errors) >= 10 and all(e.__module__ == "bne.errors" for e in errors)


def test_kernel_info_names_what_set_isa_takes():
    """Round trip for every kernel, in a child process: set_isa has no "back to automatic", and
    other tests check the automatic choice."""
    code = (
        "import bne\n"
        "auto = bne.kernel_info()['kernel']\n"
        "print(auto in bne.available_kernels())\n"
        "for kernel in bne.available_kernels():\n"
        "    bne.set_isa(kernel)\n"
        "    info = bne.kernel_info()\n"
        "    bne.set_isa(info['kernel'])  # the reported name is accepted back, unchanged\n"
        "    again = bne.kernel_info()\n"
        "    print(kernel, info['kernel'], again['kernel'], info['isa'] == bne.active_isa())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    lines = out.stdout.splitlines()
    assert lines[0] == "True"
    assert len(lines) == 1 + len(bne.available_kernels()) >= 2
    for line in lines[1:]:
        kernel, reported, again, isa_agrees = line.split()
        assert kernel == reported == again and isa_agrees == "True"


def test_no_python_module_over_600_lines_in_the_core():
    for name in ("index.py", "mapped.py", "storage.py", "fileformat.py", "codes.py", "errors.py", "__init__.py"):
        n = len((PKG / name).read_text().splitlines())
        assert n <= 600, f"{name}: {n} lines"
    assert os.path.exists(PKG / "fileformat.py")
