"""Commands under signals and concurrent use: a stop is never swallowed, two writers of one output never both
succeed, and a killed command's scratch space does not outlive the next run."""

import os
import signal

from marnet_cli.errors import command, stop_if_signalled


def test_a_sigterm_arriving_inside_a_finaliser_still_stops_the_command(capsys):
    """As when SIGTERM lands while a DataLoader iterator is finalised (`__del__`), where Python ignores exceptions."""
    ran_on = []

    class Finalised:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs here and raises inside __del__

    @command("marnet-test")
    def main(argv=None):
        Finalised()  # dropped at once; Python prints "Exception ignored in ..." and goes on
        for batch in range(3):  # the next loop of batches stops at its first one
            stop_if_signalled()
            ran_on.append(batch)

    assert main() == 128 + signal.SIGTERM
    assert capsys.readouterr().err.strip().splitlines()[-1] == "marnet-test: error: stopped by SIGTERM."
    assert ran_on == []


def test_a_stop_ignored_at_the_very_end_still_sets_the_exit_status(capsys):
    class Finalised:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)

    @command("marnet-test")
    def main(argv=None):
        Finalised()

    assert main() == 128 + signal.SIGTERM
    assert "stopped by SIGTERM" in capsys.readouterr().err
