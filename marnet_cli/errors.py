"""One error convention for every MARNet command: `prog: error: message` on stderr and an exit status.

- exit status 2 ([`UsageError`]): the command line (with its `--config` file) is wrong in itself, or its output
  location is taken; found before any input is read, as argparse's own errors;
- exit status 1 ([`CLIError`]): an input (dataset, model, checkpoint, raw files) or the environment (network, Hub,
  disk) made the command fail.

Every message says what was expected, what was found and how to fix it. Any other exception is a bug and keeps its
traceback.
"""

import functools
import sys


class CLIError(Exception):
    """An input or the environment made the command fail (exit status 1). The message explains it to the user."""

    exit_status = 1


class UsageError(CLIError):
    """The command line or its `--config` file cannot work as written (exit status 2, as argparse)."""

    exit_status = 2


def command(prog):
    """Decorator turning `main(argv=None)` into a console script entry point that returns its exit status.

    A [`CLIError`] becomes `prog: error: message` on stderr and its `exit_status`; argparse's own exits (`--help`: 0,
    a malformed command line: 2) are returned as well, so callers always get an int.

    Example:

    ```python
    @command("marnet-eval")
    def main(argv=None):
        ...
    ```
    """

    def decorate(main):
        @functools.wraps(main)
        def entry_point(argv=None):
            try:
                main(argv)
            except CLIError as error:
                print(f"{prog}: error: {error}", file=sys.stderr)
                return error.exit_status
            except SystemExit as exit_:
                return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
            return 0

        return entry_point

    return decorate
