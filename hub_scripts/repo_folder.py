"""Assemble the folder that becomes a Hub repo: the publishable files of a source folder plus its model card."""

import os
import shutil
import stat
from pathlib import Path

from marnet_cli.errors import CLIError
from marnet_cli.files import atomic_directory, file_kind


def write_repo_folder(source, card, destination, replace=True):
    """Copy `source.files_to_publish` byte for byte (those in `source.rewritten` written from that text: the
    records without local paths) and write `card` as README.md into `destination`, all at once (replacing an
    existing `destination`; with `replace=False`, refusing one that appeared meanwhile).

    Returns the relative file names in the folder, sorted.
    """
    with atomic_directory(destination, replace) as staging:
        for name in source.files_to_publish:
            if name in source.rewritten:
                (staging / name).write_text(source.rewritten[name], encoding="utf-8")
            else:
                copy_own_file(source.folder, name, staging / name)
        card.save(staging / "README.md")
    return sorted(path.name for path in Path(destination).iterdir())


def copy_own_file(folder, name, destination):
    """Copy `folder/name` to `destination` if it is a regular file that really lies in `folder`, as
    `sources.check_publishable_file` checked: the file is opened at its real path without following links and
    checked again once open, so a file swapped for a link or a FIFO since is refused, not copied."""
    real = os.path.realpath(Path(folder) / name)
    if os.path.dirname(real) != os.path.realpath(folder):
        raise CLIError(f"{Path(folder) / name} now leads out of {folder} (to {real}); nothing was published.")
    descriptor = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with open(descriptor, "rb") as file, open(destination, "wb") as copy:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            raise CLIError(
                f"{Path(folder) / name} is now a {file_kind(mode)}, not a regular file; nothing was published."
            )
        shutil.copyfileobj(file, copy)
