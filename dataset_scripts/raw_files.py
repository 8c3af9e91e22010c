"""Strict readers for the raw text and image files of the food datasets.

Every problem is reported as a :class:`RawDataError` whose message names the file (and the
line, where there is one), says what was expected and what was found, and how to fix it.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

from PIL import Image

from marnet_cli.errors import CLIError


class RawDataError(CLIError, ValueError):
    """A raw dataset file is missing or malformed (exit status 1 of `marnet-data`). The message names the file and
    line."""


def require_dir(path: str | os.PathLike, what: str, hint: str) -> Path:
    """Return `path` as a `Path`, or raise if it is not an existing directory."""
    path = Path(path)
    if not path.is_dir():
        raise RawDataError(f"{path}: {what} not found (expected a directory). {hint}")
    return path


def require_file(path: str | os.PathLike, what: str, hint: str) -> Path:
    """Return `path` as a `Path`, or raise if it is not an existing file."""
    path = Path(path)
    if not path.is_file():
        raise RawDataError(f"{path}: {what} not found (expected a file). {hint}")
    return path


def find_file(directory: Path, names: tuple[str, ...], what: str) -> Path:
    """Return the first of `names` that exists in `directory` (for files with several spellings)."""
    for name in names:
        if (directory / name).is_file():
            return directory / name
    spellings = " or ".join(str(directory / name) for name in names)
    raise RawDataError(f"{spellings}: {what} not found. Unpack the full annotation archive there.")


def read_lines(path: Path) -> list[tuple[int, str]]:
    """Read a UTF-8 text file as `(line_number, text)` pairs, line numbers 1-based.

    Line endings (LF or CRLF) and a UTF-8 byte-order mark are removed; trailing blank lines are
    ignored. A blank line before the end is an error, because line numbers carry meaning
    (line n of a class list is class n).
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise RawDataError(f"{path}: not valid UTF-8 ({error}). Re-save the file as UTF-8.") from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise RawDataError(f"{path}:{number}: empty line; every line up to the end must hold an entry.")
    return list(enumerate(lines, start=1))


def read_names(path: Path, what: str) -> list[str]:
    """Read one name per line (class or ingredient list), keeping the file's order; names must be unique."""
    names: list[str] = []
    first_line: dict[str, int] = {}
    for number, line in read_lines(path):
        name = line.strip()
        if name in first_line:
            raise RawDataError(
                f"{path}:{number}: duplicate {what} {name!r} (already on line {first_line[name]}); "
                f"each {what} must appear once."
            )
        first_line[name] = number
        names.append(name)
    if not names:
        raise RawDataError(f"{path}: the {what} list is empty.")
    return names


def check_image_bytes(data: bytes) -> None:
    """Decode enough of an encoded image to be sure training can read it; raise `OSError` if not.

    JPEGs are decoded at 1/8 scale (`draft`), which still reads the whole entropy-coded stream and so
    catches truncated files; other formats are checked with `verify()` (chunk checksums). Images
    above PIL's decompression-bomb limit are refused as unreadable.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as image:
                if image.format == "JPEG":
                    image.draft("RGB", (1, 1))
                    image.load()
                else:
                    image.verify()
        except OSError:
            raise
        except Exception as error:  # corrupt files also surface as SyntaxError, ValueError, struct.error, ...
            raise OSError(f"{type(error).__name__}: {error}") from None
