"""Commands under signals, concurrent use and a full disk: a stop is never swallowed, two writers of one output
never both succeed, a killed command's scratch space does not outlive the next run, and a failed write is one
line."""

import os
import re
import resource
import shutil
import signal
import subprocess
import sys

import datasets
import pytest
import torch
from torch.utils.data import DataLoader
from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

import hub_scripts.publish as publish_module
from dataset_scripts import cli as data_cli
from dataset_scripts.cli import main as data_main
from hub_scripts.publish import main as publish_main
from marnet_cli.errors import CLIError, command, stop_if_signalled, writing_to
from raw_fixtures import VIREO_SPLITS, write_vireo
from test_publish import REPO_ID, write_training_output
from train_fixtures import REPO_ROOT, offline_env


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


def test_workers_forked_by_a_command_end_on_sigterm_as_by_default():
    """datasets' `num_proc` pool forks workers while a command runs; `Pool.terminate()` ends them with SIGTERM. With
    the command's Python handler inherited, a SIGTERM arriving just before a worker blocks on a lock was lost and
    the worker, and its parent's terminate(), hung. A forked child must have SIGTERM and SIGHUP's default action."""
    read_end, write_end = os.pipe()

    @command("marnet-test")
    def main(argv=None):
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None)  # the command's own handler
        child = os.fork()
        if child == 0:  # the worker: report its dispositions, then wait to be terminated
            defaults = all(signal.getsignal(number) == signal.SIG_DFL for number in (signal.SIGTERM, signal.SIGHUP))
            os.write(write_end, b"1" if defaults else b"0")
            signal.pause()
            os._exit(0)
        try:
            reported = os.read(read_end, 1)
        finally:
            os.kill(child, signal.SIGTERM)
            _, status = os.waitpid(child, 0)
        assert reported == b"1" and os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM

    try:
        assert main() == 0
    finally:
        os.close(read_end), os.close(write_end)


def test_a_sigterm_while_a_dataloader_iterator_is_finalised_stops_the_next_epoch(monkeypatch, capsys):
    """The case seen in training: a worker-backed DataLoader iterator dropped at the end of an epoch, SIGTERM
    landing in its `__del__`."""
    original = _MultiProcessingDataLoaderIter.__del__

    def terminated_while_finalised(self):
        original(self)  # the workers are shut down
        os.kill(os.getpid(), signal.SIGTERM)  # still inside __del__

    monkeypatch.setattr(_MultiProcessingDataLoaderIter, "__del__", terminated_while_finalised)
    loader, batches = DataLoader(range(8), batch_size=2, num_workers=1), []

    @command("marnet-test")
    def main(argv=None):
        for _ in range(3):  # epochs
            for batch in loader:
                stop_if_signalled()  # as the training loop does at every batch
                batches.append(batch)
                break  # the epoch's iterator is dropped here, finalised with its workers

    assert main() == 128 + signal.SIGTERM
    assert "stopped by SIGTERM" in capsys.readouterr().err
    assert len(batches) == 1


def test_a_stop_ignored_at_the_very_end_still_sets_the_exit_status(capsys):
    class Finalised:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)

    @command("marnet-test")
    def main(argv=None):
        Finalised()

    assert main() == 128 + signal.SIGTERM
    assert "stopped by SIGTERM" in capsys.readouterr().err


def test_two_builds_on_one_output_never_both_succeed(tmp_path, capsys, monkeypatch):
    """A rival build on the same --output_dir finishes while this one runs: this one fails, the rival's output
    stays whole, and neither build removed the other's scratch folder."""
    raw, output = write_vireo(tmp_path / "raw"), tmp_path / "out" / "vireo"
    argv = ["build", "vireo-food172", "--data-dir", str(raw), "--output", str(output)]
    rival = []

    def build_then_let_a_rival_finish(*args, **kwargs):
        built = original(*args, **kwargs)
        if not rival:
            rival.append("running")
            rival[0] = data_main(argv)
            scratch, *rest = sorted(path.name for path in output.parent.iterdir())
            assert scratch.startswith(".marnet-data-") and rest == ["vireo"]  # this build's scratch is still there
        return built

    original = data_cli.build_dataset
    monkeypatch.setattr(data_cli, "build_dataset", build_then_let_a_rival_finish)
    assert data_main(argv) == 2 and rival == [0]
    assert f"marnet-data: error: {output} appeared while this command ran" in capsys.readouterr().err
    assert sorted(path.name for path in output.parent.iterdir()) == ["vireo"]
    assert datasets.load_from_disk(str(output))["train"].num_rows == len(VIREO_SPLITS["train"])


def test_two_publishes_to_one_output_never_both_succeed(tmp_path, capsys, monkeypatch):
    run, repo = tmp_path / "run", tmp_path / "repo"
    write_training_output(run)
    argv = [str(run), "--hub_model_id", REPO_ID, "--dry_run", "--output_dir", str(repo)]
    rival = []

    def card_after_a_rival_finished(*args, **kwargs):
        if not rival:
            rival.append("running")
            rival[0] = publish_main(argv)
        return original(*args, **kwargs)

    original = publish_module.render_card
    monkeypatch.setattr(publish_module, "render_card", card_after_a_rival_finished)
    assert publish_main(argv) == 2 and rival == [0]
    assert f"marnet-publish: error: {repo} appeared while this command ran" in capsys.readouterr().err
    assert "README.md" in os.listdir(repo) and sorted(os.listdir(tmp_path)) == ["repo", "run"]


KILLED_DURING_BUILD = """
import os, signal, sys
from dataset_scripts.builder_base import RawImageBuilder
from dataset_scripts.cli import main

def killed_during_the_build(self, examples, with_text):
    os.kill(os.getpid(), signal.SIGKILL)  # no cleanup can run
    yield

RawImageBuilder._generate_examples = killed_during_the_build
sys.exit(main(sys.argv[1:]))
"""


def test_the_next_build_removes_the_scratch_folder_of_a_killed_one(tmp_path, caplog):
    raw, parent = write_vireo(tmp_path / "raw"), tmp_path / "out"
    build = ["build", "vireo-food172", "--data-dir", str(raw), "--output"]
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_DURING_BUILD, *build, str(parent / "a")], cwd=REPO_ROOT, env=offline_env()
    )
    assert killed.returncode == -signal.SIGKILL
    [abandoned] = os.listdir(parent)
    assert abandoned.startswith(".marnet-data-")
    assert data_main([*build, str(parent / "b")]) == 0
    assert os.listdir(parent) == ["b"]
    assert f"Removed 1 scratch folder(s) of killed runs in {parent}: {abandoned}" in caplog.text


def test_a_write_that_fails_in_torch_is_one_line_with_the_free_space(tmp_path, monkeypatch):
    """torch's writer (checkpoints) fails without an errno (`inline_container.cc`) when the disk fills up;
    RLIMIT_FSIZE makes a real write fail the same way. With little space left it is reported as a full disk, as
    marnet-data reports one."""

    def save_too_much():
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2**16, hard))
        try:
            with pytest.raises(CLIError) as failed, writing_to(tmp_path):
                torch.save(torch.zeros(2**16), tmp_path / "optimizer.bin")
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        return str(failed.value)

    where = re.escape(str(tmp_path))
    assert re.fullmatch(rf"{where}: writing failed \(RuntimeError: .+\), [\d.]+ MiB free there\.", save_too_much())
    monkeypatch.setattr("marnet_cli.errors.shutil.disk_usage", lambda path: shutil._ntuple_diskusage(1, 1, 4096))
    assert save_too_much() == (
        f"{tmp_path}: no space left on device: free some space or write to another disk (0.0 MiB free there)."
    )
