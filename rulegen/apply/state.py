"""The apply state directory: one folder per namespace, each mode's cache files in it, and pruning.

`state_dir/NETNS/` holds what the last apply into NETNS left for the next:
the incremental compile's cache (`COMPILE_CACHE`) and each applier's own
files, named by the applier (`Applier.state_files`, e.g. iptables mode's
`iptables-ipv4.json` and `.gen`), so modes never read each other's. The
files are opened as `rulegen.files` opens state: never through a link,
never blocking on a FIFO, owner-only in folders rulegen marks as its own;
`prune_state` deletes only such folders' own files, and only once their
namespace is gone.
"""

from __future__ import annotations

import os
import stat

from ..diagnostics import UsageError
from ..files import STATE_MARK, StateFileError, read_state, remove_state_folder, write_state
from ..kernel.netns import Namespaces
from .lock import lock_names, remove_lock, try_lock

COMPILE_CACHE = "compile.msgpack"  # the incremental compile's cache, beside the appliers' caches


def default_state_dir() -> str | None:
    env = os.environ.get("RULEGEN_STATE_DIR")
    if env is not None:
        return env or None
    if os.geteuid() == 0:
        return "/run/rulegen"
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    return os.path.join(xdg, "rulegen") if xdg else None


def read_state_file(path: str, warn: list[str]) -> bytes | None:
    """A state file's bytes; None when missing or unusable (what is wrong with it goes to WARN)."""
    try:
        return read_state(path)
    except StateFileError as e:
        msg = f"{e}; ignored, the live tables are read instead"
        if msg not in warn:
            warn.append(msg)
    except OSError:
        pass
    return None


def write_state_file(path: str, data: bytes, warn: list[str]) -> bool:
    try:
        write_state(path, data)
        return True
    except StateFileError as e:
        msg = f"{e}; the apply cache is not kept"
        if msg not in warn:
            warn.append(msg)
    except OSError:
        pass  # the cache only saves work; without it the live tables are read
    return False


def prune_state(state_dir: str | None, namespaces: Namespaces, lock_dir: str | None,
                files: tuple[str, ...]) -> None:
    """Forget the caches and lock files of namespaces that are gone.

    Only folders rulegen made and marked (`files.STATE_MARK`) are touched,
    and in them only FILES (rulegen's own), so a state directory shared with
    other programs keeps everything else. A namespace whose lock is held
    (an apply about to create it) is left alone.
    """
    def gone(name: str) -> bool:
        try:
            return not namespaces.exists(name)
        except UsageError:  # not a namespace name at all: not ours
            return False

    if state_dir:
        try:
            entries = os.listdir(state_dir)
        except OSError:
            entries = []
        for name in entries:
            d = os.path.join(state_dir, name)
            try:
                if (not stat.S_ISDIR(os.lstat(d).st_mode)
                        or not stat.S_ISREG(os.lstat(os.path.join(d, STATE_MARK)).st_mode)):
                    continue
            except OSError:
                continue  # not a folder, or not one rulegen made
            if not gone(name):
                continue
            with try_lock(lock_dir, name) as got:
                if got:
                    remove_state_folder(d, list(files))
    for name in lock_names(lock_dir):
        if gone(name):
            remove_lock(lock_dir, name)
