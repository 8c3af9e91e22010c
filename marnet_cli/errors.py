"""One error convention for every MARNet command: `prog: error: message` on stderr and an exit status.

- exit status 2 ([`UsageError`]): the command line (with its `--config` file) is wrong in itself, or its output
  location is taken; found before any input is read, as argparse's own errors;
- exit status 1 ([`CLIError`]): an input (dataset, model, checkpoint, raw files) or the environment (network, Hub,
  disk) made the command fail; a full disk, a read-only or unwritable location is reported as such
  ([`describe_os_error`]);
- exit status 128 + N: the command was stopped by signal N (SIGINT, SIGTERM, SIGHUP). The signal is turned into an
  exception, so every `finally` block runs and partial outputs are removed, as on any other error. Raised while a
  finaliser runs (a DataLoader iterator's `__del__`), where Python prints and ignores exceptions, it is raised again
  at the next batch or when the command returns ([`stop_if_signalled`]).

Every message says what was expected, what was found and how to fix it. Any other exception is a bug and keeps its
traceback.
"""

import contextlib
import errno
import functools
import os
import shutil
import signal
import sys
import threading


class CLIError(Exception):
    """An input or the environment made the command fail (exit status 1). The message explains it to the user."""

    exit_status = 1


class UsageError(CLIError):
    """The command line or its `--config` file cannot work as written (exit status 2, as argparse)."""

    exit_status = 2


class Interrupted(KeyboardInterrupt):
    """The command received SIGTERM or SIGHUP. A `KeyboardInterrupt`, as SIGINT gives, so that no `except Exception`
    swallows it on the way out."""

    def __init__(self, signal_number):
        super().__init__(signal_number)
        self.signal_number = signal_number


# Signals that stop a command cleanly (SIGINT already raises KeyboardInterrupt).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
# OSError numbers that describe the environment, not a bug: reported in one line with what to do.
ENVIRONMENT_ERRORS = {
    errno.ENOSPC: "no space left on device: free some space or write to another disk",
    errno.EDQUOT: "disk quota exceeded: free some space or write to another disk",
    errno.EROFS: "read-only file system: write to a writable location",
    errno.EACCES: "permission denied: use a location you may read and write",
}


def describe_os_error(error, where=None):
    """A one-line message for an OSError caused by the environment (full disk, quota, read-only or forbidden
    location), found in `error` or the exceptions that caused it; None for any other error. `where` names the
    location instead of the error's file name."""
    seen = set()
    while error is not None and id(error) not in seen:  # re-raised exceptions can make the chain a cycle
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in ENVIRONMENT_ERRORS:
            condition = ENVIRONMENT_ERRORS[error.errno]
            where = where or error.filename
            if where is None:
                return f"{condition[0].upper()}{condition[1:]}."
            free = f" ({_free_space(where)})" if error.errno in (errno.ENOSPC, errno.EDQUOT) else ""
            return f"{where}: {condition}{free}."
        error = error.__cause__ or error.__context__
    return None


# What torch's and safetensors' writers raise when a write fails: messages without an errno.
WRITE_FAILURE_MARKERS = ("inline_container.cc", "file write failed", "No space left on device", "os error 28")
FULL_DISK_BYTES = 16 * 2**20  # a failed write with less free space than this is taken for a full disk


@contextlib.contextmanager
def writing_to(where):
    """Within the block, a failed write becomes a one-line [`CLIError`] naming `where` and its free space: an
    OSError of the environment ([`describe_os_error`]), or the errors of torch's and safetensors' writers, which carry
    no errno (`RuntimeError: [enforce fail at inline_container.cc:...] ...`); with less than `FULL_DISK_BYTES` free,
    the disk is said to be full, as an ENOSPC error says it."""
    try:
        yield
    except Exception as error:
        message = describe_os_error(error, where)
        if message is None and any(marker in str(error) for marker in WRITE_FAILURE_MARKERS):
            if shutil.disk_usage(_existing(where)).free < FULL_DISK_BYTES:
                message = describe_os_error(OSError(errno.ENOSPC, "No space left on device"), where)
            else:
                detail = str(error).splitlines()[0].split("] ")[-1].strip(" .")
                message = f"{where}: writing failed ({type(error).__name__}: {detail}), {_free_space(where)}."
        if message is None:
            raise
        raise CLIError(message) from None


def _existing(path):
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def _free_space(path):
    return f"{shutil.disk_usage(_existing(path)).free / 2**20:.1f} MiB free there"


def _interrupt_handler(owner_pid):
    """A handler raising [`Interrupted`] in process `owner_pid`. Worker processes forked from it (datasets' `num_proc`
    pool) get the default action back at the fork ([`_default_stop_signals_in_child`]); should one still run this
    handler, it falls back to the default action there too, so `Pool.terminate()` ends them."""

    def handler(signal_number, frame):
        if os.getpid() != owner_pid:
            signal.signal(signal_number, signal.SIG_DFL)
            os.kill(os.getpid(), signal_number)
            return
        raise Interrupted(signal_number)

    handler.stops_a_command = True
    return handler


def _default_stop_signals_in_child():
    """At every fork: a child of a running command gets SIGTERM and SIGHUP's default action back. A Python-level
    handler in a forked worker can lose the signal: one that arrives just before the worker blocks on a lock
    (`sem_wait`) is only flagged for the interpreter, and the worker then blocks forever instead of ending, which
    hangs `Pool.terminate()` (datasets' `num_proc` pool) in its parent."""
    for number in STOP_SIGNALS:
        if getattr(signal.getsignal(number), "stops_a_command", False):
            signal.signal(number, signal.SIG_DFL)


os.register_at_fork(after_in_child=_default_stop_signals_in_child)


# The signal number of a stop raised inside a finaliser and ignored there (see [`_remember_ignored_stop`]).
_ignored_stop = []


def _remember_ignored_stop(previous_hook):
    """A `sys.unraisablehook` for the command's duration: a stop (Ctrl-C, [`Interrupted`]) raised inside a finaliser
    (a DataLoader iterator's `__del__`), which Python prints as "Exception ignored in ..." and forgets, is
    remembered for [`stop_if_signalled`]. Every other ignored exception goes to `previous_hook`."""

    def hook(unraisable):
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            _ignored_stop.append(getattr(unraisable.exc_value, "signal_number", signal.SIGINT))
        else:
            previous_hook(unraisable)

    return hook


def stop_if_signalled():
    """Raises the stop that a finaliser ignored, if any: called by the training and evaluation loops at every
    batch, and by [`command`] when the command returns."""
    if _ignored_stop:
        number = _ignored_stop.pop()
        _ignored_stop.clear()
        raise Interrupted(number) if number != signal.SIGINT else KeyboardInterrupt()


def _worker_message(message):
    """The message of an error raised in a DataLoader worker: torch re-raises it in the main process with the
    worker's traceback in front (`Caught CLIError in DataLoader worker process 0. Original Traceback ...`); its last
    line is `module.ErrorClass: message`."""
    if "\nOriginal Traceback" not in message:
        return message
    return message.rstrip().splitlines()[-1].split(": ", 1)[-1]


def command(prog):
    """Decorator turning `main(argv=None)` into a console script entry point that returns its exit status.

    A [`CLIError`] becomes `prog: error: message` on stderr and its `exit_status`, as does an OSError of the
    environment (full disk, read-only location); argparse's own exits (`--help`: 0, a malformed command line: 2) are
    returned as well, so callers always get an int. SIGTERM and SIGHUP raise [`Interrupted`] while the command runs,
    so its cleanup runs as for SIGINT (Ctrl-C); the exit status is then 128 + the signal number.

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
            in_main_thread = threading.current_thread() is threading.main_thread()
            handler = _interrupt_handler(os.getpid())
            previous = {number: signal.signal(number, handler) for number in STOP_SIGNALS} if in_main_thread else {}
            previous_unraisablehook = sys.unraisablehook
            if in_main_thread:
                sys.unraisablehook = _remember_ignored_stop(previous_unraisablehook)
            _ignored_stop.clear()
            try:
                main(argv)
                stop_if_signalled()
            except CLIError as error:
                # Dropping the traceback frees what the failed code held first: open progress bars end their line.
                error.__traceback__ = None
                print(f"{prog}: error: {_worker_message(str(error))}", file=sys.stderr)
                return error.exit_status
            except Exception as error:
                message = describe_os_error(error)
                if message is None:
                    raise
                print(f"{prog}: error: {message}", file=sys.stderr)
                return 1
            except KeyboardInterrupt as interrupt:
                number = interrupt.signal_number if isinstance(interrupt, Interrupted) else signal.SIGINT
                print(f"{prog}: error: stopped by {signal.Signals(number).name}.", file=sys.stderr)
                return 128 + number
            except SystemExit as exit_:
                return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
            finally:
                for number, previous_handler in previous.items():
                    signal.signal(number, previous_handler)
                sys.unraisablehook = previous_unraisablehook
            return 0

        return entry_point

    return decorate
