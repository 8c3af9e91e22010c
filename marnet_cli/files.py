"""Writing files and folders all at once: readers see the old state or the complete new one, never a partial one.

Everything is first written under a hidden name next to its destination (same filesystem), then renamed. A process
killed in between leaves only `.partial-*` entries, which the next write of the same folder removes. Replacing an
existing folder takes two renames (the old one aside to `.partial-old-<name>`, the new one in place): a process killed
between them leaves the old copy complete under that name, and [`remove_partial_entries`] puts it back. At every
instant one complete copy exists.
"""

import contextlib
import errno
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

from .errors import UsageError

FILE_KINDS = {
    stat.S_IFREG: "regular file",
    stat.S_IFDIR: "folder",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
    stat.S_IFIFO: "FIFO",
    stat.S_IFSOCK: "socket",
    stat.S_IFLNK: "symbolic link",
}
PARTIAL_PREFIX = ".partial-"
REPLACED_PREFIX = f"{PARTIAL_PREFIX}old-"  # the previous copy of a folder while it is being replaced


@contextlib.contextmanager
def atomic_path(path):
    """Yield a fresh temporary file path next to `path`; rename it to `path` if the block succeeds, else remove it.

    The temporary name is unique, so concurrent writers of the same file (processes of one run on a shared disk)
    cannot clobber each other's halves; the last rename wins with a complete file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f"{PARTIAL_PREFIX}{path.name}.", dir=path.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def atomic_write_text(path, text):
    """Write `text` (UTF-8) to `path` all at once."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def atomic_write_json(path, value):
    """Write `value` as indented JSON to `path` all at once."""
    atomic_write_text(path, json.dumps(value, indent=2) + "\n")


def staging_directory(destination):
    """The hidden folder where `destination` is assembled: `.partial-<name>` beside it, emptied."""
    destination = Path(destination)
    staging = destination.with_name(f"{PARTIAL_PREFIX}{destination.name}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def commit_directory(staging, destination):
    """Rename the finished `staging` folder to `destination`, replacing an existing `destination` (which stays
    complete as `.partial-old-<name>` until the new one is in place; see [`remove_partial_entries`])."""
    destination = Path(destination)
    if destination.exists():
        replaced = destination.with_name(f"{REPLACED_PREFIX}{destination.name}")
        shutil.rmtree(replaced, ignore_errors=True)
        os.replace(destination, replaced)
        os.replace(staging, destination)
        shutil.rmtree(replaced)
    else:
        os.replace(staging, destination)


def remove_partial_entries(directory):
    """Clean up after a process killed while writing into `directory`: a folder it was replacing gets its previous
    copy back (`.partial-old-<name>` -> `<name>`, when `<name>` is missing), then every other `.partial-*` entry is
    deleted. Returns the names of the folders put back."""
    directory = Path(directory)
    restored = []
    for replaced in sorted(directory.glob(f"{REPLACED_PREFIX}*")):
        original = directory / replaced.name.removeprefix(REPLACED_PREFIX)
        if not original.exists():
            os.replace(replaced, original)
            restored.append(original.name)
    for partial in directory.glob(f"{PARTIAL_PREFIX}*"):
        if partial.is_dir() and not partial.is_symlink():
            shutil.rmtree(partial, ignore_errors=True)
        else:
            partial.unlink(missing_ok=True)
    return restored


def file_kind(mode):
    """What a file of `os.stat` mode `mode` is, in words ("regular file", "character device", "FIFO", ...)."""
    return FILE_KINDS.get(stat.S_IFMT(mode), "special file")


def looks_like_local_path(value):
    """Whether `value` (a model or dataset option) can only be a local path, not a Hub id: absolute, home- or
    dot-relative, or with more than one `/`."""
    value = str(value)
    return value.startswith(("/", "~", "./", "../")) or value.count("/") > 1 or value in (".", "..")


def refuse_missing_local_path(value, option):
    """A [`UsageError`] when `value` can only be a local path (see [`looks_like_local_path`]) and nothing is there:
    reported as such, rather than as a failure to reach the Hub."""
    if value is not None and looks_like_local_path(value) and not Path(value).expanduser().exists():
        raise UsageError(f"{option} {value}: no such file or folder.")


def refuse_dangling_symlink(path, option):
    """A [`UsageError`] when the output path `path` (given as `option`) is a symbolic link to nothing: writing
    there would fail only after all the work."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise UsageError(
            f"{option} {path} is a symbolic link to {os.readlink(path)}, which does not exist: remove the link, "
            "create its target, or choose another path."
        )


def commit_new_directory(staging, destination):
    """Rename the finished `staging` folder to `destination`, which must not exist: when another command wrote it
    since this one checked (two runs on one output), a [`UsageError`] and `destination` stays as that one left
    it. (A rename never replaces a folder that holds files.)"""
    try:
        os.rename(staging, destination)
    except OSError as error:
        if error.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
            raise
        raise UsageError(
            f"{destination} appeared while this command ran (another command writing the same output?): it is left "
            "as it is, and this command's result is discarded. Choose another path, or remove it and run again."
        ) from None


@contextlib.contextmanager
def atomic_directory(destination, replace=True):
    """Yield an empty staging folder; it becomes `destination` only if the block succeeds: replacing it
    ([`commit_directory`]), or with `replace=False` only if it still does not exist ([`commit_new_directory`]).

    For one process. Multi-process writers call [`staging_directory`] and [`commit_directory`] themselves, around
    their own synchronisation.
    """
    staging = staging_directory(destination)
    try:
        yield staging
        (commit_directory if replace else commit_new_directory)(staging, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def atomic_files(directory, last=()):
    """Yield a staging folder whose files are then moved into `directory`, each by an atomic rename.

    For a folder that also holds other things (a run folder with its checkpoints): each file appears complete, and the
    names in `last` appear after all others, so their presence means that the whole set is there.
    """
    directory = Path(directory)
    staging = staging_directory(directory / "files")
    try:
        yield staging
        for path in sorted(staging.iterdir(), key=lambda path: (path.name in last, path.name)):
            os.replace(path, directory / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
