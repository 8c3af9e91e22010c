"""Fault tolerance: a run SIGKILLed while writing a checkpoint resumes from the last finished one and ends with the
same weights, bit for bit, as a run that was never interrupted.

The kill uses the documented test hook `MARNET_TEST_KILL_DURING_CHECKPOINT=<step>` of
`modeling_marnet.training.checkpointing`: the process kills itself with SIGKILL after the step's state is written to
the hidden partial directory and before it is renamed, the worst moment for a crash.
"""

import json
import signal

from safetensors.torch import load_file

from modeling_marnet.training.checkpointing import KILL_HOOK_ENV
from train_fixtures import (
    module_command,
    offline_env,
    run_command,
    train_argv,
)


def train(workspace, output_dir, *extra, env=None):
    # 24 rows, batch 4: 6 steps per epoch, so step 4 is mid-epoch and the run crosses an epoch (and its evaluation).
    # Full MARNet: the diffusion branch draws timesteps and noise, so the RNG states must be restored too.
    return run_command(
        module_command(
            "modeling_marnet.train",
            *train_argv(
                workspace,
                output_dir,
                *("--max-steps", 8, "--learning-rate", 3e-3, "--checkpointing-steps", 2, "--save-total-limit", 2),
                *("--logging-steps", 1, "--augment", *extra),
            ),
        ),
        env=env,
    )


def losses(output_dir):
    lines = (output_dir / "logs" / "history.jsonl").read_text().splitlines()
    return {record["step"]: record["loss"] for record in map(json.loads, lines) if "loss" in record}


def test_killed_run_resumes_to_the_same_weights(workspace):
    reference = workspace["root"] / "reference"
    result = train(workspace, reference)
    assert result.returncode == 0, result.stderr[-3000:]

    interrupted = workspace["root"] / "interrupted"
    killed = train(workspace, interrupted, env=offline_env(**{KILL_HOOK_ENV: "6"}))
    assert killed.returncode == -signal.SIGKILL
    checkpoints = interrupted / "checkpoints"
    assert (checkpoints / ".partial-checkpoint-6" / "model.safetensors").is_file()  # state written, not renamed
    assert not (checkpoints / "checkpoint-6").exists()
    assert not (interrupted / "metrics.json").exists()

    resumed = train(workspace, interrupted, "--resume-from-checkpoint", "latest")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resuming from {checkpoints / 'checkpoint-4'} at step 4 (epoch 0, 4 batches in)" in resumed.stderr
    assert not list(checkpoints.glob(".partial-*"))

    final_reference = load_file(reference / "checkpoints" / "checkpoint-8" / "model.safetensors")
    final_resumed = load_file(checkpoints / "checkpoint-8" / "model.safetensors")
    assert final_reference.keys() == final_resumed.keys()
    for name, tensor in final_reference.items():
        assert tensor.equal(final_resumed[name]), name
    assert losses(interrupted) == losses(reference)  # steps 5-8 replayed exactly, 1-4 kept once
    reference_metrics = json.loads((reference / "metrics.json").read_text())
    resumed_metrics = json.loads((interrupted / "metrics.json").read_text())
    assert resumed_metrics["per_split"] == reference_metrics["per_split"]
    assert resumed_metrics["global_step"] == 8
