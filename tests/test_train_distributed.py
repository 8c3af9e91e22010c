"""A real 2-process CPU run (gloo) through `accelerate launch` against a 1-process run with the same global batch.

Launch: accelerate 1.15's `accelerate launch --cpu --num_processes 2` starts ONE process (its CPU multi-process
path needs mpirun), so the test uses the torchrun launcher (`--multi_gpu`) with `ACCELERATE_USE_CPU=1`, which gives
two gloo processes on CPU.

Why the runs are comparable: the sampler is seeded (`use_seedable_sampler`), so both runs draw the same permutation;
accelerate hands consecutive per-device batches to rank 0 and rank 1, so a global batch of 8 holds the same rows in
the same order as the 1-process batch of 8. The contrastive loss gathers features across processes (negatives = the
global batch, rows in rank order) and DDP averages gradients, so the gradient equals the 1-process one. The `ema`
ablation draws no random numbers in training (no diffusion noise) and dropout is 0. What remains is float32
summation order (gloo all-reduce, the gathered matmul), so per-step losses agree to ~1e-7 relative. The weights agree
less tightly: Adam divides by sqrt(v), which magnifies rounding in near-zero gradients, but each Adam update moves a
weight by at most about lr, so the difference is bounded by lr * steps; measured: ~1e-3 after 6 steps at lr 3e-3.
"""

import json

import pytest
import torch
from safetensors.torch import load_file

from modeling_marnet.training.accelerate_setup import single_process_warning
from train_fixtures import (
    module_command,
    offline_env,
    run_command,
    train_argv,
    two_process_launcher,
)

LEARNING_RATE = 3e-3
MAX_STEPS = 6


@pytest.fixture(scope="module")
def runs(workspace):
    root = workspace["root"]  # the dataset: train 24 = 3 global batches of 8; validation 11, test 9

    def train_args(output_dir, per_device_batch):
        return train_argv(
            workspace,
            output_dir,
            *("--ablation", "ema", "--max-steps", MAX_STEPS, "--learning-rate", LEARNING_RATE),
            "--per-device-train-batch-size",
            per_device_batch,
            # 2 processes x 4 = 8 rows per evaluation round: 11 and 9 rows need padding duplicates.
            *("--per-device-eval-batch-size", 4, "--checkpointing-steps", MAX_STEPS, "--logging-steps", 1),
        )

    launcher = two_process_launcher()
    two = run_command(
        module_command("modeling_marnet.train", *train_args(root / "two", 4), launcher=launcher),
        env=offline_env(ACCELERATE_USE_CPU="1"),
    )
    assert two.returncode == 0, two.stderr[-4000:]
    one = run_command(module_command("modeling_marnet.train", *train_args(root / "one", 8)))
    assert one.returncode == 0, one.stderr[-4000:]
    return root / "one", root / "two"


def read_history(output_dir):
    lines = (output_dir / "logs" / "history.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_both_ranks_train_and_checkpoint(runs):
    _, two = runs
    hyperparameters = json.loads((two / "training_args.json").read_text())
    assert hyperparameters["num_processes"] == 2 and hyperparameters["total_train_batch_size"] == 8
    checkpoint = two / "checkpoints" / f"checkpoint-{MAX_STEPS}"
    assert (checkpoint / "random_states_0.pkl").is_file() and (checkpoint / "random_states_1.pkl").is_file()


def test_every_evaluation_sample_is_counted_exactly_once(runs):
    for output_dir in runs:
        metrics = json.loads((output_dir / "metrics.json").read_text())
        assert metrics["per_split"]["validation"]["num_samples"] == 11
        assert metrics["per_split"]["test"]["num_samples"] == 9
        evaluations = [record for record in read_history(output_dir) if "eval_num_samples" in record]
        assert [record["eval_num_samples"] for record in evaluations] == [11, 11]  # after epochs 1 and 2


def test_two_processes_match_one_process_with_the_same_global_batch(runs):
    one, two = runs
    losses_one = [record["loss"] for record in read_history(one) if "loss" in record]
    losses_two = [record["loss"] for record in read_history(two) if "loss" in record]
    assert len(losses_one) == len(losses_two) == MAX_STEPS
    torch.testing.assert_close(torch.tensor(losses_two), torch.tensor(losses_one), rtol=1e-5, atol=0)
    metrics_one = json.loads((one / "metrics.json").read_text())
    metrics_two = json.loads((two / "metrics.json").read_text())
    for split in ("validation", "test"):
        assert metrics_two["per_split"][split]["top1"] == metrics_one["per_split"][split]["top1"]
        assert metrics_two["per_split"][split]["loss"] == pytest.approx(
            metrics_one["per_split"][split]["loss"], abs=1e-5
        )
    weights_one = load_file(one / "checkpoints" / f"checkpoint-{MAX_STEPS}" / "model.safetensors")
    weights_two = load_file(two / "checkpoints" / f"checkpoint-{MAX_STEPS}" / "model.safetensors")
    largest_difference = max((weights_one[name] - weights_two[name]).abs().max().item() for name in weights_one)
    assert largest_difference <= LEARNING_RATE * MAX_STEPS / 2


def simple_launcher_environment(*launch_args):
    """The environment `accelerate launch LAUNCH_ARGS train.py` gives the run when its simple launcher (one process)
    starts it, computed by accelerate's own launch code without starting anything."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_simple_launcher_cmd_env

    args, *_ = _validate_launch_command(launch_command_parser().parse_args([*launch_args, "train.py"]))
    return prepare_simple_launcher_cmd_env(args)[1]


@pytest.mark.parametrize("launch_args, warned", [(["--num_processes", "2"], True), ([], False)])
def test_a_launch_asked_for_several_processes_that_started_one_warns(launch_args, warned):
    environment = simple_launcher_environment(*launch_args)
    assert (single_process_warning(environment, num_processes=1) is not None) == warned
    assert single_process_warning(environment, num_processes=2) is None
    assert single_process_warning({}, num_processes=1) is None  # marnet-train without accelerate launch
