"""Writing the files rulegen leaves behind: in one step, so nothing the user had is lost.

A payload written with `compile -o` or a golden file rewritten by
`--update-golden` is written beside its final name and renamed over it, so a
full disk, a crash or Ctrl-C leaves the previous file whole, never half a new
one; a path there that is not a regular file (`/dev/stdout`, a FIFO) is the
user's choice of destination and is written directly. apply's state (its
caches) is different: nobody but rulegen should put anything there, so
`read_state` / `write_state` read only regular files, never follow a link or
block on a FIFO, keep the files owner-only (0600) in owner-only folders
(0700) that rulegen marks as its own, and `remove_state_folder` deletes only
what such a marked folder holds of rulegen's.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile


def write_atomic(path: str | os.PathLike[str], data: str | bytes, mode: int | None = None) -> None:
    """Replace PATH with DATA in one step (text as UTF-8, newlines untouched).

    The new file keeps the old one's permissions; a new file gets MODE, or
    what the umask allows. Raises OSError, with nothing left behind.
    """
    path = os.fspath(path)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        with open(path, "wb") as f:
            f.write(raw)
        return
    if st is not None:
        mode = stat.S_IMODE(st.st_mode)
    elif mode is None:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    folder, name = os.path.split(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.chmod(tmp, mode)  # mkstemp makes 0600 files
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# ---------------------------------------------------------------------- state

# The state folders rulegen makes (one per namespace under the state
# directory) hold this empty file, so that pruning in a state directory that
# other programs share touches only folders rulegen made.
STATE_MARK = ".rulegen-state"
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class StateFileError(OSError):
    """A state path that rulegen will not use: not a regular file, or in a folder it does not own."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a folder"), (stat.S_ISLNK, "a symbolic link"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")):
        if test(mode):
            return name
    return "not a regular file"


def _open_folder(folder: str) -> int:
    """A descriptor of FOLDER, a real folder (no symbolic link) of ours that nobody else can write into.

    Everything rulegen keeps in a state folder is read and written relative to
    this descriptor, so a folder swapped for a link meanwhile cannot redirect it.
    """
    try:
        fd = os.open(folder or ".", _DIR_FLAGS)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise StateFileError(f"{folder}: not a folder rulegen made (a symbolic link or a file)") from None
        raise
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        os.close(fd)
        raise StateFileError(f"{folder}: not private to this user (owner uid {st.st_uid}, "
                             f"mode {stat.S_IMODE(st.st_mode):04o})")
    return fd


def _read_at(dfd: int, name: str, shown: str) -> bytes | None:
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=dfd)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise StateFileError(f"{shown}: a symbolic link where a state file should be") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StateFileError(f"{shown}: {_kind(st.st_mode)} where a state file should be")
        with open(fd, "rb", closefd=False) as f:
            return f.read()  # sized from fstat in one read, as open().read() is
    finally:
        os.close(fd)


def read_state(path: str | os.PathLike[str]) -> bytes | None:
    """The bytes of one of rulegen's state files, or None when it (or its folder) is missing.

    Never follows a symbolic link and never blocks: opened non-blocking and
    read only when it is a regular file, so a FIFO or a device put in its
    place is refused at once. Anything but a regular file in a private folder
    of ours raises StateFileError, whose message says what was found; callers
    treat it as no state.
    """
    folder, name = os.path.split(os.fspath(path))
    try:
        dfd = _open_folder(folder)
    except FileNotFoundError:
        return None
    try:
        return _read_at(dfd, name, os.fspath(path))
    finally:
        os.close(dfd)


def write_state(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace one of rulegen's state files with DATA: owner-only (0600) in an owner-only folder (0700).

    A missing folder is made (its parents as `os.makedirs` makes them) and
    marked as rulegen's (STATE_MARK). An existing folder is used only when it
    is a real folder of this user that nobody else can write into. The file is
    written beside its name and renamed over whatever is there (a FIFO or a
    link is replaced, never written through). Raises OSError (StateFileError
    for a folder rulegen will not use), leaving nothing behind.
    """
    folder, name = os.path.split(os.fspath(path))
    made = False
    if folder and not os.path.lexists(folder):
        parent = os.path.dirname(folder)
        if parent:
            os.makedirs(parent, exist_ok=True)
        try:
            os.mkdir(folder, 0o700)
            made = True
        except FileExistsError:
            pass
    dfd = _open_folder(folder)
    try:
        if made:
            os.close(os.open(STATE_MARK, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd))
        tmp = f".{name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd)
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o600)  # whatever the umask
                f.write(data)
            os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except OSError:
                pass
            raise
    finally:
        os.close(dfd)


def remove_state(path: str | os.PathLike[str]) -> None:
    """Delete one of rulegen's state files (whatever it is: a link itself, not what it points to).

    A missing file or folder is fine; a folder rulegen will not use raises StateFileError.
    """
    folder, name = os.path.split(os.fspath(path))
    try:
        dfd = _open_folder(folder)
    except FileNotFoundError:
        return
    try:
        os.unlink(name, dir_fd=dfd)
    except FileNotFoundError:
        pass
    finally:
        os.close(dfd)


def remove_state_folder(folder: str, names: list[str]) -> None:
    """Delete NAMES and the mark from a folder rulegen made, then the folder if nothing else is left."""
    try:
        dfd = _open_folder(folder)
    except OSError:
        return
    try:
        try:
            os.stat(STATE_MARK, dir_fd=dfd, follow_symlinks=False)
        except OSError:
            return  # not rulegen's: leave it as it is
        for n in [*names, STATE_MARK]:
            try:
                os.unlink(n, dir_fd=dfd)
            except OSError:
                pass
    finally:
        os.close(dfd)
    try:
        os.rmdir(folder)
    except OSError:
        pass  # something else lives there too
