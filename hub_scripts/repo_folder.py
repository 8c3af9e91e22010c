"""Assemble the folder that becomes a Hub repo: the publishable files of a source folder plus its model card."""

import shutil
from pathlib import Path

from marnet_cli.files import atomic_directory


def write_repo_folder(source, card, destination):
    """Copy `source.files_to_publish` byte for byte (those in `source.rewritten` written from that text: the
    records without local paths) and write `card` as README.md into `destination`, all at once (replacing an
    existing `destination`).

    Returns the relative file names in the folder, sorted.
    """
    with atomic_directory(destination) as staging:
        for name in source.files_to_publish:
            if name in source.rewritten:
                (staging / name).write_text(source.rewritten[name], encoding="utf-8")
            else:
                shutil.copyfile(Path(source.folder) / name, staging / name)
        card.save(staging / "README.md")
    return sorted(path.name for path in Path(destination).iterdir())
