"""bne.fileio: whole-file replacement is all or nothing."""

import os

import pytest

from bne import fileio


def test_write_atomic_replaces_the_whole_file_and_leaves_no_temp(tmp_path):
    p = tmp_path / "m.json"
    p.write_text("old")
    fileio.write_atomic(p, "new text")
    assert p.read_text() == "new text"
    fileio.write_atomic(p, b"\x00bytes")
    assert p.read_bytes() == b"\x00bytes"
    assert sorted(os.listdir(tmp_path)) == ["m.json"]


def test_a_failed_writer_keeps_the_old_file_and_removes_its_temp(tmp_path):
    p = tmp_path / "m.json"
    p.write_text("old")
    with pytest.raises(KeyboardInterrupt), fileio.replacing(p) as tmp:
        tmp.write_text("half")
        raise KeyboardInterrupt
    assert p.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["m.json"]


def test_replacing_with_a_named_temp(tmp_path):
    p = tmp_path / "f.npy"
    with fileio.replacing(p, tmp=tmp_path / ".f.tmp.npy") as tmp:
        tmp.write_bytes(b"x")
    assert p.read_bytes() == b"x"
    assert sorted(os.listdir(tmp_path)) == ["f.npy"]
