"""What every `hub_scripts` command shares: user-facing errors and all-or-nothing output folders."""

import contextlib
import functools
import os
import shutil
import sys
import tempfile
from pathlib import Path


class UserError(Exception):
    """Bad input or environment, explained for the user: what was expected, what was found, how to fix it."""


def cli_entry_point(main):
    """Wrap a `main(argv) -> None` so that a [`UserError`] becomes a message on stderr and exit status 1.

    Any other exception is a bug and keeps its traceback. Returns the exit status (0 on success).
    """

    @functools.wraps(main)
    def wrapped(argv=None):
        try:
            main(argv)
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        return 0

    return wrapped


@contextlib.contextmanager
def atomic_directory(destination):
    """Yield a fresh temporary folder beside `destination`; rename it to `destination` only if the block succeeds.

    Nothing is left behind on failure. `destination` must not exist yet (no silent overwrites).
    """
    destination = Path(destination).absolute()
    if destination.exists():
        raise UserError(f"Output folder {destination} already exists: remove it or choose another path.")
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.partial-", dir=destination.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes it owner-only; the result is an ordinary folder
    try:
        yield staging
        os.rename(staging, destination)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
