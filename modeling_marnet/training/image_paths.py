"""Reading the image files that a dataset's image values name by path (`{"bytes": None, "path": ...}`).

A path in a dataset is data, not trust: a row `{"bytes": None, "path": "/dev/zero"}` must not make a run read
forever, nor a row naming a private file feed it to the decoder. So a path is read only when `datasets` itself would
find the file there for that dataset (a local path, resolved as `datasets` resolves it, whose real location, links
followed, is inside the dataset's own folder or the folder where `datasets` keeps what it downloads or extracts for
Hub datasets), only when it is a regular file (not a device, FIFO, socket or folder), and only up to
[`MAX_IMAGE_FILE_BYTES`]. URLs are not fetched: the datasets our tools build, `push_to_hub` and `to_parquet` embed
the image bytes.
"""

import os
import stat
from pathlib import Path

import datasets
from datasets.utils.file_utils import is_local_path

from marnet_cli.files import file_kind

from .pixel_limit import RefusedImage

MAX_IMAGE_FILE_BYTES = 256 * 2**20  # 256 MiB: far above any image PIL.Image.MAX_IMAGE_PIXELS lets through compressed


def dataset_folders(name_or_path):
    """The own folder of the dataset `name_or_path` (`--dataset`): the folder itself, a Parquet file's folder, or
    none for a Hub id."""
    path = Path(name_or_path).expanduser()
    if not path.exists():
        return ()
    return (path if path.is_dir() else path.parent,)


class ImageFiles:
    """Path-only image values -> values holding the file's bytes, read under the rules of the module docstring from
    `folders` (see [`dataset_folders`]) and `datasets`' download folders; anything else is refused with a
    [`RefusedImage`] saying why and what to do."""

    def __init__(self, folders=(), max_bytes=MAX_IMAGE_FILE_BYTES):
        downloads = (datasets.config.DOWNLOADED_DATASETS_PATH, datasets.config.EXTRACTED_DATASETS_PATH)
        self.folders = tuple(dict.fromkeys(os.path.realpath(folder) for folder in (*folders, *downloads)))
        self.max_bytes = max_bytes

    def embedded(self, value):
        """`value` ({"bytes", "path"}, or an image already decoded) with its bytes, read from its path if needed."""
        if not isinstance(value, dict) or value.get("bytes") is not None or value.get("path") is None:
            return value
        return {"bytes": self.read(value["path"]), "path": value["path"]}

    def read(self, path):
        """The bytes of the image file `path`, or a [`RefusedImage`]."""
        if not is_local_path(path):
            raise RefusedImage(
                "the image is a URL, and URLs in a dataset are not fetched. Embed the image bytes in the dataset "
                "(`push_to_hub` and `to_parquet` do) or download the files into the dataset's folder"
            )
        real = os.path.realpath(path)
        if not any(os.path.commonpath([real, folder]) == folder for folder in self.folders):
            raise RefusedImage(
                f"the image file{f' (really {real})' if real != os.path.abspath(path) else ''} lies outside the "
                f"dataset's folders ({', '.join(self.folders)}), and a dataset may only name its own files. Move "
                "the images into the dataset's folder, or embed their bytes in the dataset"
            )
        try:
            # O_NOFOLLOW: `real` holds no link, so a link put there since is refused; O_NONBLOCK: a FIFO does not
            # wait for a writer.
            descriptor = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as error:
            raise RefusedImage(f"the image file cannot be opened ({error.strerror})") from None
        try:
            status = os.fstat(descriptor)
            if not stat.S_ISREG(status.st_mode):
                raise RefusedImage(
                    f"the image path names a {file_kind(status.st_mode)}, not a regular file. Point it at an image "
                    "file"
                )
            data = b""
            if status.st_size <= self.max_bytes:
                with os.fdopen(descriptor, "rb", closefd=False) as file:
                    data = file.read(self.max_bytes + 1)  # the file may have grown since fstat
        finally:
            os.close(descriptor)
        if status.st_size > self.max_bytes or len(data) > self.max_bytes:
            raise RefusedImage(
                f"the image file is larger than the {self.max_bytes / 2**20:.0f} MiB read for one image "
                f"({max(status.st_size, len(data)):,} bytes). Shrink the image or remove that row"
            )
        return data
