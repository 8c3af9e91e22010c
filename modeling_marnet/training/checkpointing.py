"""Resumable checkpoints and saved models, written all at once (`marnet_cli.files`): a run killed while saving never
leaves a half-written `checkpoint-<step>` that `--resume_from_checkpoint latest` could pick, nor a half-written best
model.

A checkpoint holds `accelerator.save_state` (model, optimizer, registered scheduler, sampler, every process's RNG
states) and `trainer_state.json` (step, epoch position, best metric, early-stopping counter, throughput counters).
Models are saved with full weights whatever the parallelism: `accelerator.get_state_dict` gathers DeepSpeed ZeRO-3
and FSDP shards on the main process, which writes them with `save_pretrained(state_dict=...)`.

Test hook: with the environment variable `MARNET_TEST_KILL_DURING_CHECKPOINT=<step>` the process SIGKILLs itself
in the middle of writing that step's checkpoint (state saved, not yet renamed). The fault-tolerance test uses it.
"""

import dataclasses
import json
import os
import re
import shutil
import signal
from pathlib import Path

from marnet_cli.errors import CLIError
from marnet_cli.files import PARTIAL_PREFIX, atomic_directory, commit_directory, staging_directory

from .text_features import MARNetWithTextEncoder

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"
KILL_HOOK_ENV = "MARNET_TEST_KILL_DURING_CHECKPOINT"


@dataclasses.dataclass
class TrainerState:
    """Where training stands; saved in every checkpoint."""

    global_step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0  # batches of `epoch` already trained on
    best_metric: float | None = None
    best_step: int | None = None
    evaluations_without_improvement: int = 0
    train_images: int = 0
    train_seconds: float = 0.0

    def save(self, directory):
        (Path(directory) / STATE_FILE).write_text(json.dumps(dataclasses.asdict(self), indent=2))

    @classmethod
    def load(cls, directory):
        return cls(**json.loads((Path(directory) / STATE_FILE).read_text()))


def completed_checkpoints(checkpoints_dir):
    """Finished checkpoints, oldest first: `checkpoint-<step>` directories holding a trainer state."""
    checkpoints_dir = Path(checkpoints_dir)
    if not checkpoints_dir.is_dir():
        return []
    found = []
    for path in checkpoints_dir.iterdir():
        match = CHECKPOINT_PATTERN.match(path.name)
        if match and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def save_checkpoint(accelerator, checkpoints_dir, state, keep_last):
    """Saves the full training state as `checkpoint-<global_step>` and deletes all but the last `keep_last`."""
    final = Path(checkpoints_dir) / f"checkpoint-{state.global_step}"
    partial = final.with_name(f"{PARTIAL_PREFIX}{final.name}")
    if accelerator.is_main_process:
        staging_directory(final)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    if os.environ.get(KILL_HOOK_ENV) == str(state.global_step):
        os.kill(os.getpid(), signal.SIGKILL)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state.save(partial)
        commit_directory(partial, final)
        for old in completed_checkpoints(checkpoints_dir)[:-keep_last]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def remove_partial_checkpoints(checkpoints_dir):
    """Deletes what a killed run left half-written."""
    for path in Path(checkpoints_dir).glob(f"{PARTIAL_PREFIX}*"):
        shutil.rmtree(path, ignore_errors=True)


def resolve_checkpoint(resume_from, checkpoints_dir):
    """`latest` -> the newest finished checkpoint; a path -> that checkpoint, checked."""
    if resume_from == "latest":
        checkpoints = completed_checkpoints(checkpoints_dir)
        if not checkpoints:
            raise CLIError(
                f"--resume_from_checkpoint latest: no finished checkpoint in {checkpoints_dir}. Run without it to "
                "start from scratch, or give a checkpoint directory."
            )
        return checkpoints[-1]
    path = Path(resume_from)
    if not (path / STATE_FILE).is_file():
        raise CLIError(
            f"--resume_from_checkpoint {path}: not a finished checkpoint (no {STATE_FILE}). Give a "
            "`checkpoints/checkpoint-<step>` directory written by marnet-train, or `latest`."
        )
    return path


def load_checkpoint(accelerator, path):
    """Restores everything `save_checkpoint` saved; returns the trainer state."""
    accelerator.load_state(str(path))
    return TrainerState.load(path)


COMPILED_PREFIX = "_orig_mod."  # torch.compile's wrapper module
JOINT_PREFIX = "classifier."  # MARNetWithTextEncoder's classifier


def unwrap_classifier(accelerator, model):
    """The MARNet classifier inside the prepared model (without DDP/compile wrappers or a jointly trained text
    encoder)."""
    model = accelerator.unwrap_model(model, keep_torch_compile=False)
    return model.classifier if isinstance(model, MARNetWithTextEncoder) else model


def save_model(accelerator, model, image_processor, directory):
    """`save_pretrained` of the classifier inside the prepared `model` (full weights, also under DeepSpeed ZeRO-3 or
    FSDP) and of its image processor into `directory`, replacing it all at once. Called by every process."""
    state_dict = accelerator.get_state_dict(model)  # a collective: gathers shards onto the main process
    classifier = unwrap_classifier(accelerator, model)
    if accelerator.is_main_process:
        state_dict = {key.removeprefix(COMPILED_PREFIX): value for key, value in state_dict.items()}
        if any(key.startswith(JOINT_PREFIX) for key in state_dict):  # drop the jointly trained text encoder
            state_dict = {
                key.removeprefix(JOINT_PREFIX): value
                for key, value in state_dict.items()
                if key.startswith(JOINT_PREFIX)
            }
        with atomic_directory(directory) as staging:
            classifier.save_pretrained(
                staging, state_dict=state_dict, is_main_process=True, save_function=accelerator.save
            )
            image_processor.save_pretrained(staging)
    accelerator.wait_for_everyone()
