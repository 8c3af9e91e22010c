"""Resuming never runs code from a checkpoint and never loses a run: payload pickles stay inert, a busy output folder
is refused, the best model survives a kill at any instant of its replacement, damaged checkpoints are passed over
with a warning that names them, and missing random states are announced as a resume that is not exact."""

import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys

import datasets
import pytest
import torch

from marnet_cli.commands import train as main
from marnet_cli.files import commit_directory, staging_directory
from marnet_cli.run_folder import RunFolder
from modeling_marnet.training.checkpointing import remove_partial_checkpoints, write_manifest
from train_fixtures import (
    REPO_ROOT,
    make_dataset_dict,
    offline_env,
    save_dataset,
    train_argv,
)


@pytest.fixture(scope="module")
def workspace(workspace):
    # Checkpoints at steps 2 and 4, then an evaluation that saves the best model.
    assert main(train_args(workspace, workspace["root"] / "run", "--max-steps", 4)) == 0
    return workspace


def train_args(workspace, output_dir, *extra):
    return train_argv(workspace, output_dir, "--checkpointing-steps", 2, "--save-total-limit", 3, *extra)


def resume(workspace, output_dir, *extra, max_steps=6):
    """Resumes the 4-step run to `max_steps`: a changed setting (the schedule's length), so allowed explicitly."""
    return main(
        train_args(
            workspace,
            output_dir,
            "--max-steps",
            max_steps,
            "--allow-changed-arguments",
            "--resume-from-checkpoint",
            *extra,
        )  # fmt: skip
    )


@pytest.fixture
def run_copy(workspace, tmp_path):
    """A copy of the finished 4-step run, to attack."""
    return shutil.copytree(workspace["root"] / "run", tmp_path / "run")


class Payload:
    """Unpickling it runs a shell command that creates `marker`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_payload_pickles_in_a_checkpoint_never_run(workspace, run_copy, tmp_path, caplog, capsys):
    marker = tmp_path / "code-ran"
    payload = pickle.dumps(Payload(marker))
    pickle.loads(payload)  # the payload is live: plain unpickling runs it
    assert marker.exists()
    marker.unlink()
    checkpoint = run_copy / "checkpoints" / "checkpoint-4"

    # RNG states are read with weights_only=True: refused, and the run resumes without them, saying so.
    (checkpoint / "random_states_0.pkl").write_bytes(payload)
    write_manifest(checkpoint)  # whoever hands over a checkpoint can rewrite its manifest too
    with caplog.at_level(logging.WARNING):
        assert resume(workspace, run_copy, checkpoint) == 0
    assert "its random_states_0.pkl cannot be read safely (UnpicklingError: Weights only load failed)" in caplog.text
    assert "NOT an exact continuation" in caplog.text
    assert json.loads((run_copy / "metrics.json").read_text())["global_step"] == 6
    assert not marker.exists()

    # Accelerate unpickles registered objects (custom_checkpoint_*.pkl) in full: such a file is refused unread.
    (checkpoint / "custom_checkpoint_0.pkl").write_bytes(payload)
    write_manifest(checkpoint)
    assert resume(workspace, run_copy, checkpoint, max_steps=8) == 1
    error = capsys.readouterr().err
    assert f"--resume_from_checkpoint {checkpoint} is damaged: it holds custom_checkpoint_0.pkl, a pickle" in error
    assert not marker.exists()

    # The optimizer state is read with weights_only=True: a payload there stops the run, unexecuted.
    (checkpoint / "custom_checkpoint_0.pkl").unlink()
    torch.save({"state": Payload(marker), "param_groups": []}, checkpoint / "optimizer.bin")
    write_manifest(checkpoint)
    assert resume(workspace, run_copy, checkpoint, max_steps=8) == 1
    error = capsys.readouterr().err
    assert f"marnet-train: error: Checkpoint {checkpoint} cannot be loaded (UnpicklingError: Weights only" in error
    assert "never code" in error and "Traceback" not in error
    assert not marker.exists()


def test_a_busy_output_dir_is_refused_until_its_run_ends_however_it_ends(workspace, tmp_path, capsys):
    output_dir = tmp_path / "busy"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from marnet_cli.run_folder import RunFolder; RunFolder(sys.argv[1]).claim(); "
            "print('claimed', flush=True); sys.stdin.read()",
            str(output_dir),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
        env=offline_env(),
    )
    try:
        assert holder.stdout.readline() == "claimed\n"  # a marnet-train run holds the folder
        assert main(train_args(workspace, output_dir, "--max-steps", 2)) == 2
        error = capsys.readouterr().err
        assert f"marnet-train: error: --output_dir {output_dir} is in use by another marnet-train run" in error
        assert RunFolder(output_dir).entries() == []  # the refused run wrote nothing
    finally:
        holder.kill()  # the holder crashes: the kernel drops its lock
        holder.wait()
    assert holder.returncode == -signal.SIGKILL
    assert main(train_args(workspace, output_dir, "--max-steps", 2)) == 0
    assert json.loads((output_dir / "metrics.json").read_text())["global_step"] == 2


def test_best_model_survives_a_kill_between_the_two_renames_of_its_replacement(run_copy, monkeypatch, caplog):
    checkpoints = run_copy / "checkpoints"
    best = checkpoints / "best-model"
    old_weights = (best / "model.safetensors").read_bytes()
    staging = staging_directory(best)
    (staging / "model.safetensors").write_bytes(b"new weights")
    renames = []

    def killed_at_second_rename(source, destination):
        renames.append((source, destination))
        if len(renames) == 2:
            raise KeyboardInterrupt  # the process dies here: old copy moved aside, new one not yet in place
        os.rename(source, destination)

    monkeypatch.setattr("marnet_cli.files.os.replace", killed_at_second_rename)
    with pytest.raises(KeyboardInterrupt):
        commit_directory(staging, best)
    monkeypatch.undo()
    assert not best.exists() and (checkpoints / ".partial-old-best-model" / "model.safetensors").is_file()

    with caplog.at_level(logging.WARNING):
        remove_partial_checkpoints(checkpoints)  # what a resumed run does first
    assert (best / "model.safetensors").read_bytes() == old_weights
    assert not list(checkpoints.glob(".partial-*"))
    assert f"Restored {best}: the previous run was killed while replacing it." in caplog.text


DAMAGE = {
    "truncated-weights": lambda checkpoint: _truncate(checkpoint / "model.safetensors"),
    "truncated-optimizer": lambda checkpoint: _truncate(checkpoint / "optimizer.bin"),
    "truncated-trainer-state": lambda checkpoint: _truncate(checkpoint / "trainer_state.json"),
}


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return f"{path.name} has {len(data) // 2} bytes, {len(data)} were written"


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_resume_passes_over_a_damaged_checkpoint_and_a_torn_history_line(workspace, run_copy, caplog, capsys, damage):
    checkpoints = run_copy / "checkpoints"
    reason = DAMAGE[damage](checkpoints / "checkpoint-4")
    assert resume(workspace, run_copy, checkpoints / "checkpoint-4") == 1  # named explicitly: refused, not replaced
    error = capsys.readouterr().err
    assert f"--resume_from_checkpoint {checkpoints / 'checkpoint-4'} is damaged: {reason}" in error

    with open(run_copy / "logs" / "history.jsonl", "a") as history:
        history.write('{"step": 5, "lo')  # killed in the middle of a line
    with caplog.at_level(logging.WARNING):
        assert resume(workspace, run_copy, "latest") == 0
    assert f"Not resuming from {checkpoints / 'checkpoint-4'}, which is damaged: {reason}." in caplog.text
    assert f"Resuming from the newest intact checkpoint, {checkpoints / 'checkpoint-2'}" in caplog.text
    assert "history.jsonl: the last line (3) is incomplete" in caplog.text
    steps = [json.loads(line)["step"] for line in (run_copy / "logs" / "history.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 6


def test_missing_random_states_resume_with_a_clear_warning(workspace, run_copy, caplog):
    (run_copy / "checkpoints" / "checkpoint-4" / "random_states_0.pkl").unlink()
    with caplog.at_level(logging.WARNING):
        assert resume(workspace, run_copy, "latest") == 0
    assert "checkpoint-4: it has no random_states_0.pkl, so process 0 resumes with fresh random" in caplog.text
    assert "NOT an exact continuation" in caplog.text


def test_resume_refuses_another_dataset_or_changed_settings(workspace, run_copy, tmp_path, capsys, caplog):
    same_run = ["--max-steps", "4", "--resume-from-checkpoint", "latest"]
    assert main([*train_args(workspace, run_copy, *same_run), "--per-device-train-batch-size", "2"]) == 2
    error = capsys.readouterr().err
    assert "this run's settings differ from the run that wrote the checkpoint (" in error
    assert "per_device_train_batch_size: 4 then, 2 now" in error and "pass --allow_changed_arguments" in error

    assert main(train_args(workspace, run_copy, *same_run, "--max-train-samples", "20")) == 1
    assert "the checkpoint's run trained on 24 rows, this one has 20" in capsys.readouterr().err
    with caplog.at_level(logging.WARNING):
        assert resume(workspace, run_copy, "latest") == 0  # --allow-changed-arguments: continues, with a warning
    assert "Resuming with changed settings (max_steps: 4 then, 6 now" in caplog.text

    renamed = make_dataset_dict()
    renamed = renamed.cast_column("label", datasets.ClassLabel(names=["a", "b", "c", "d"]))
    other = train_args(workspace, run_copy, *same_run)
    other[other.index(str(workspace["dataset"]))] = str(save_dataset(tmp_path / "renamed", renamed))
    assert main(other) == 1
    error = capsys.readouterr().err
    assert "the checkpoint was trained on the labels ['tomato_soup', 'pea_soup', " in error
    assert "this dataset has ['a', 'b', 'c', 'd'] (4)" in error


def test_a_run_killed_right_after_its_final_checkpoint_resumes_without_a_second_evaluation(workspace, run_copy):
    (run_copy / "metrics.json").unlink()  # killed before the outputs were written
    assert main(train_args(workspace, run_copy, "--max-steps", "4", "--resume-from-checkpoint", "latest")) == 0
    history = [json.loads(line) for line in (run_copy / "logs" / "history.jsonl").read_text().splitlines()]
    assert [record["step"] for record in history if "eval_top1" in record] == [4]
    assert (run_copy / "metrics.json").is_file()
