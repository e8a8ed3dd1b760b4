"""One `rulegen apply` at a time per network namespace: an flock on a file named after it.

Two applies that read the live tables at once both see a jump rule missing
and both insert it; one that reads while the other sends computes its change
against rules that are gone. So every apply (and dry run, which writes the
cache) holds an exclusive flock on `LOCK_DIR/NAME.lock` from before it
compiles (the compile cache is per namespace too) until it has saved its
caches. The folder is fixed, not the state directory: an apply with
`RULEGEN_STATE_DIR` set elsewhere, or empty (no cache), must still exclude
the others. A second apply waits, saying so on stderr with the holder's pid
(which the holder writes into the file), or gives up after a timeout.

The lock file is opened without following a link and without blocking, and
must be a regular file in a folder of ours. A lock file may be deleted
(pruned, once its namespace is gone) while another process waits on it, so
whoever gets the lock checks that the name still leads to the file it
locked, and otherwise locks the new one. The lock is re-entrant within one
process (its threads share it): the apply command takes it around the
compile, and `apply.apply` takes it again for callers that use the library
alone.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from ..diagnostics import UsageError

# A name that is no namespace name (those cannot start with a dot), so it
# never meets a namespace's state folder in the default state directory.
LOCK_DIR = "/run/rulegen/.locks"
LOCK_SUFFIX = ".lock"
_OPEN_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_REOPEN_MAX = 100  # times the lock file may vanish under us before we give up
_POLL = 0.05  # seconds between tries when waiting with a timeout

_held: dict[str, list[int]] = {}  # lock path -> [fd, depth] held by this process


class LockError(UsageError):
    """The lock cannot be taken: a trap at its path, or another apply held it past the timeout."""


def lock_path(lock_dir: str, netns: str) -> str:
    return os.path.join(lock_dir, netns + LOCK_SUFFIX)


def _folder(lock_dir: str) -> None:
    os.makedirs(lock_dir, mode=0o700, exist_ok=True)
    st = os.lstat(lock_dir)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise LockError(f"{lock_dir}: the lock folder must be a folder of this user that nobody else can write into")


def _open(path: str) -> int:
    try:
        fd = os.open(path, _OPEN_FLAGS, 0o600)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise LockError(f"{path}: a symbolic link where apply's lock file should be; delete it") from None
        raise LockError(f"{path}: cannot open apply's lock file: {e.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise LockError(f"{path}: not a regular file where apply's lock file should be; delete it")
    return fd


def _still_named(fd: int, path: str) -> bool:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _holder(fd: int) -> str:
    try:
        got = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return got if got.isdigit() else ""


@contextmanager
def namespace_lock(netns: str, lock_dir: str | None, timeout: float | None = None,
                   notify: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the apply lock of NETNS (nothing when LOCK_DIR is None).

    TIMEOUT None waits as long as it takes; otherwise LockError after
    TIMEOUT seconds. NOTIFY gets one line when the lock is busy.
    """
    if not lock_dir:
        yield
        return
    path = lock_path(lock_dir, netns)
    mine = _held.get(path)
    if mine is not None:
        mine[1] += 1
        try:
            yield
        finally:
            mine[1] -= 1
        return
    _folder(lock_dir)
    fd = _acquire(path, netns, timeout, notify)
    _held[path] = [fd, 1]
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        del _held[path]
        try:
            os.ftruncate(fd, 0)  # a stale pid would send the next waiter looking for a process that is gone
        except OSError:
            pass
        os.close(fd)


def _acquire(path: str, netns: str, timeout: float | None, notify: Callable[[str], None] | None) -> int:
    deadline = None if timeout is None else time.monotonic() + timeout
    told = False
    for _ in range(_REOPEN_MAX):
        fd = _open(path)
        try:
            if not _try(fd):
                holder = _holder(fd)
                if notify is not None and not told:
                    who = f"another rulegen apply (pid {holder})" if holder else "another rulegen apply"
                    wait = "waiting" if timeout is None else f"waiting up to {timeout:g} s"
                    notify(f"rulegen: netns {netns}: {who} holds the lock {path}; {wait}")
                    told = True
                if deadline is None:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                else:
                    while not _try(fd):
                        left = deadline - time.monotonic()
                        if left <= 0:
                            holder = _holder(fd) or holder
                            who = f"another rulegen apply (pid {holder})" if holder else "another rulegen apply"
                            raise LockError(f"netns {netns}: {who} still holds the lock {path} after "
                                            f"--lock-timeout {timeout:g} s; nothing was changed")
                        time.sleep(min(_POLL, left))
            if _still_named(fd, path):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # pruned while we waited: lock the file that has the name now
    raise LockError(f"{path}: the lock file keeps disappearing; is something deleting it?")


def _try(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


@contextmanager
def try_lock(lock_dir: str | None, netns: str) -> Iterator[bool]:
    """The lock of NETNS if nobody else holds it (True), else False at once; True without a LOCK_DIR."""
    if not lock_dir:
        yield True
        return
    path = lock_path(lock_dir, netns)
    if path in _held:
        yield True
        return
    try:
        _folder(lock_dir)
        fd = os.open(path, _OPEN_FLAGS, 0o600)
    except (OSError, LockError):
        yield False
        return
    try:
        ok = stat.S_ISREG(os.fstat(fd).st_mode) and _try(fd) and _still_named(fd, path)
        if not ok:
            yield False
            return
        _held[path] = [fd, 1]
        try:
            yield True
        finally:
            del _held[path]
    finally:
        os.close(fd)


def lock_names(lock_dir: str | None) -> list[str]:
    """The namespaces that have a lock file in LOCK_DIR."""
    if not lock_dir:
        return []
    try:
        return [n[:-len(LOCK_SUFFIX)] for n in os.listdir(lock_dir) if n.endswith(LOCK_SUFFIX)]
    except OSError:
        return []


def remove_lock(lock_dir: str | None, netns: str) -> None:
    """Delete the lock file of NETNS unless an apply holds it (one waiting on it then locks a new file)."""
    if not lock_dir:
        return
    path = lock_path(lock_dir, netns)
    if path in _held:
        return
    with try_lock(lock_dir, netns) as got:
        if got:
            try:
                os.unlink(path)
            except OSError:
                pass
