"""Bounds for tests that perform an attack: a regression must fail the test, not exhaust the machine or hang it."""

import contextlib
import resource
import signal


def _address_space():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


@contextlib.contextmanager
def memory_limit(extra_bytes=256 * 2**20):
    """Within the block this process may map at most `extra_bytes` more (RLIMIT_AS): a read or decode that would
    grow without bound raises MemoryError (or the decoder's allocation error) instead."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _address_space() + extra_bytes
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


class TimedOut(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds=5):
    """Within the block a call that blocks (opening a FIFO without a writer) raises [`TimedOut`] after `seconds`."""

    def expire(signal_number, frame):
        raise TimedOut(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
