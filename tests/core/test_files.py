"""Files rulegen writes replace the old ones in one step (`write_atomic`).

Its state files (`read_state`, `write_state`) are private, and safe to open
whatever is put in their place.
"""

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


def test_state_files_are_owner_only_in_a_marked_owner_only_folder(tmp_path):
    old = os.umask(0)  # the loosest umask: the modes must not come from it
    try:
        existing = tmp_path / "state"
        existing.mkdir(mode=0o755)
        p = existing / "ns" / "cache.json"
        files.write_state(p, b"{}")
        assert p.read_bytes() == b"{}"
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
        assert stat.S_IMODE((existing / "ns").stat().st_mode) == 0o700
        assert (existing / "ns" / files.STATE_MARK).is_file()
        assert stat.S_IMODE(existing.stat().st_mode) == 0o755  # a folder that was there is left as it is
        os.chmod(p, 0o644)
        files.write_state(p, b"[]")  # replaced, and private again
        assert p.read_bytes() == b"[]" and stat.S_IMODE(p.stat().st_mode) == 0o600
        assert files.read_state(p) == b"[]"
        assert sorted(os.listdir(existing / "ns")) == sorted([files.STATE_MARK, "cache.json"])  # no temporaries
    finally:
        os.umask(old)
    assert files.read_state(tmp_path / "none" / "x.json") is None
    assert files.read_state(existing / "ns" / "missing.json") is None


def _in_thread(fn):
    """FN's result or exception, from a thread that must finish (a FIFO must not hang the test run)."""
    out: list = []

    def run():
        try:
            out.append(("ok", fn()))
        except BaseException as e:  # noqa: BLE001 - handed to the test
            out.append(("err", e))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout=20)
    assert not t.is_alive(), "blocked"
    return out[0]


def test_a_fifo_or_link_at_a_state_path_is_refused_at_once_and_replaced_on_write(tmp_path):
    folder = tmp_path / "ns"
    files.write_state(folder / "other", b"x")
    fifo = folder / "cache.json"
    os.mkfifo(fifo)
    kind, got = _in_thread(lambda: files.read_state(fifo))
    assert kind == "err" and isinstance(got, files.StateFileError) and "a FIFO" in str(got)
    kind, _ = _in_thread(lambda: files.write_state(fifo, b"new"))
    assert kind == "ok" and fifo.is_file() and fifo.read_bytes() == b"new"
    target = tmp_path / "precious"
    target.write_text("mine")
    link = folder / "gen.json"
    link.symlink_to(target)
    with pytest.raises(files.StateFileError, match="symbolic link"):
        files.read_state(link)
    files.write_state(link, b"cache")  # the link is replaced, what it points to is untouched
    assert not link.is_symlink() and link.read_bytes() == b"cache" and target.read_text() == "mine"


def test_state_in_a_folder_that_is_a_link_or_not_private_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "ns").symlink_to(elsewhere)
    with pytest.raises(files.StateFileError, match="not a folder rulegen made"):
        files.write_state(tmp_path / "state" / "ns" / "cache.json", b"x")
    with pytest.raises(files.StateFileError):
        files.read_state(tmp_path / "state" / "ns" / "cache.json")
    assert os.listdir(elsewhere) == []
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    with pytest.raises(files.StateFileError, match="not private"):
        files.write_state(shared / "cache.json", b"x")
    assert os.listdir(shared) == []


def test_remove_state_folder_takes_only_rulegen_files_from_marked_folders(tmp_path):
    ours = tmp_path / "ns-gone"
    files.write_state(ours / "cache.json", b"x")
    files.remove_state_folder(str(ours), ["cache.json", "never-made.json"])
    assert not ours.exists()
    mixed = tmp_path / "ns-mixed"
    files.write_state(mixed / "cache.json", b"x")
    (mixed / "notes.txt").write_text("someone else's")
    files.remove_state_folder(str(mixed), ["cache.json"])
    assert sorted(os.listdir(mixed)) == ["notes.txt"]
    foreign = tmp_path / "not-ours"  # no mark: not rulegen's, whatever its files are called
    foreign.mkdir(mode=0o700)
    (foreign / "cache.json").write_text("theirs")
    files.remove_state_folder(str(foreign), ["cache.json"])
    assert (foreign / "cache.json").read_text() == "theirs"


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
