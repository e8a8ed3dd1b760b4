"""Files rulegen writes replace the old ones in one step (`rulegen.files.write_atomic`)."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from rulegen import files
from rulegen.cli import main
from test_bad_input import GOOD_SVC as SVC


def test_replaces_text_and_bytes_and_keeps_the_old_mode(tmp_path):
    p = tmp_path / "out.rules"
    p.write_text("old\n")
    os.chmod(p, 0o640)
    files.write_atomic(p, "new ✓\r\nline\n")
    assert p.read_bytes() == "new ✓\r\nline\n".encode()
    assert stat.S_IMODE(p.stat().st_mode) == 0o640
    files.write_atomic(str(p), b"\x00bytes")
    assert p.read_bytes() == b"\x00bytes"
    assert sorted(os.listdir(tmp_path)) == ["out.rules"]


def test_a_new_file_gets_the_umask_or_the_mode_asked_for(tmp_path):
    old = os.umask(0o027)
    try:
        files.write_atomic(tmp_path / "a", "x")
        files.write_atomic(tmp_path / "b", "x", mode=0o600)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "b").stat().st_mode) == 0o600


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    p = tmp_path / "golden.txt"
    p.write_text("what the user had\n")

    def broken(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError):
        files.write_atomic(p, "half of something new")
    assert p.read_text() == "what the user had\n"
    assert os.listdir(tmp_path) == ["golden.txt"]


def test_a_relative_name_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    files.write_atomic("plain.txt", "x")
    assert (tmp_path / "plain.txt").read_text() == "x"


def test_private_dir_makes_the_missing_folders_the_last_owner_only(tmp_path, monkeypatch):
    old = os.umask(0o022)
    try:
        existing = tmp_path / "state"
        existing.mkdir(mode=0o755)
        os.chmod(existing, 0o755)
        p = existing / "ns" / "deeper" / "cache.json"
        files.write_atomic(p, b"{}", private_dir=True)
        assert p.read_bytes() == b"{}"
        assert stat.S_IMODE((existing / "ns" / "deeper").stat().st_mode) == 0o700
        assert stat.S_IMODE((existing / "ns").stat().st_mode) == 0o755  # os.makedirs: the umask's default
        assert stat.S_IMODE(existing.stat().st_mode) == 0o755  # a folder that was there is left as it is
        files.write_atomic(p, b"[]", private_dir=True)  # folders there already: fine
        assert p.read_bytes() == b"[]"
        monkeypatch.chdir(tmp_path)
        files.write_atomic("plain", "x", private_dir=True)  # no folder in the name
        assert (tmp_path / "plain").read_text() == "x"
    finally:
        os.umask(old)
    with pytest.raises(FileNotFoundError):  # without it, a missing folder is an error
        files.write_atomic(tmp_path / "no" / "such" / "f", "x")
    assert not (tmp_path / "no").exists()


def test_a_fifo_is_written_into_not_replaced(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    files.write_atomic(fifo, "through the pipe\n")
    reader.join(timeout=10)
    assert got == [b"through the pipe\n"]
    assert stat.S_ISFIFO(fifo.stat().st_mode)


def test_compile_output_failure_keeps_the_previous_payload(tmp_path, monkeypatch):
    src = tmp_path / "svc.yaml"
    src.write_text(SVC)
    out = tmp_path / "payload.rules"
    r = CliRunner().invoke(main, ["compile", str(src), "-o", str(out)])
    assert r.exit_code == 0, r.output
    before = out.read_text()
    assert "KUBE-SERVICES" in before

    def broken(a, b):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken)
    src.write_text(SVC.replace("10.96.0.20", "10.96.0.21"))
    r = CliRunner().invoke(main, ["compile", str(src), "-o", str(out)])
    assert r.exit_code == 2
    assert f"{out}: cannot write: No space left on device" in r.stderr
    assert out.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["payload.rules", "svc.yaml"]


def test_compile_output_into_a_missing_folder_is_a_usage_error(tmp_path):
    src = tmp_path / "svc.yaml"
    src.write_text(SVC)
    r = CliRunner().invoke(main, ["compile", str(src), "-o", str(tmp_path / "no" / "such" / "x.rules")])
    assert r.exit_code == 2
    assert "cannot write: No such file or directory" in r.stderr
    assert not Path(tmp_path / "no").exists()
