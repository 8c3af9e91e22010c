"""Scratch folders that outlive no command, however it ends.

A command's scratch folder (`<prefix>XXXX` beside its output) holds a lock file that the command keeps locked (an
advisory `flock`, which the kernel drops when the process ends, SIGKILL included). A command removes its own folder
on every way out it sees; the folders of commands killed outright (SIGKILL, power loss) are removed by the next
command that makes one in the same place: their lock is free.
"""

import fcntl
import logging
import os
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"


def _lock(path):
    """A descriptor of `path` (created if needed) holding an exclusive lock, or None when another process holds
    it."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(descriptor)
        return None
    return descriptor


def remove_abandoned(parent, prefix):
    """Removes the scratch folders `parent/<prefix>*` of commands that ended without removing them (their lock is
    free); returns their names. Folders in use, and folders without a lock file (just being made), are left."""
    removed = []
    for folder in sorted(Path(parent).glob(f"{prefix}*")):
        if folder.is_symlink() or not (folder / LOCK_NAME).is_file():
            continue
        descriptor = _lock(folder / LOCK_NAME)
        if descriptor is None:
            continue
        try:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
        finally:
            os.close(descriptor)
    if removed:
        logger.warning(f"Removed {len(removed)} scratch folder(s) of killed runs in {parent}: {', '.join(removed)}.")
    return removed


class ScratchDirectory:
    """A new, locked scratch folder `parent/<prefix>XXXX` (`path`), to [`remove`] when done; the abandoned ones of
    killed commands are removed first ([`remove_abandoned`]). `parent=None`: the system's temporary folder. Raises
    OSError when `parent` cannot be written."""

    def __init__(self, parent, prefix):
        parent = Path(parent if parent is not None else tempfile.gettempdir())
        remove_abandoned(parent, prefix)
        self.path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        self._lock = _lock(self.path / LOCK_NAME)

    def remove(self):
        shutil.rmtree(self.path, ignore_errors=True)
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None
