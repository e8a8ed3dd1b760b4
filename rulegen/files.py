"""Writing the files rulegen leaves behind: in one step, so nothing the user had is lost.

A payload written with `compile -o`, a golden file rewritten by
`--update-golden`, apply's caches: each is written beside its final name and
renamed over it, so a full disk, a crash or Ctrl-C leaves the previous file
whole, never half a new one. A path that is not a regular file (`/dev/stdout`,
a FIFO) cannot be replaced by a rename and is written directly.
"""

from __future__ import annotations

import os
import stat
import tempfile


def write_atomic(path: str | os.PathLike[str], data: str | bytes, mode: int | None = None,
                 private_dir: bool = False) -> None:
    """Replace PATH with DATA in one step (text as UTF-8, newlines untouched).

    The new file keeps the old one's permissions; a new file gets MODE, or
    what the umask allows. With PRIVATE_DIR, missing folders are made first
    (`os.makedirs`: the file's own folder accessible to the owner only,
    0700, as apply's state is). Raises OSError, with nothing left behind.
    """
    path = os.fspath(path)
    if private_dir:
        folder = os.path.dirname(path)
        if folder:
            os.makedirs(folder, mode=0o700, exist_ok=True)
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
