"""Resumable checkpoints: written to a hidden partial directory, then renamed, so a run killed while saving never
leaves a half-written `checkpoint-<step>` that `--resume-from-checkpoint latest` could pick.

A checkpoint holds `accelerator.save_state` (model, optimizer, registered scheduler, sampler, every process's RNG
states) and `trainer_state.json` (step, epoch position, best metric, early-stopping counter, throughput counters).

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

from .errors import TrainingInputError

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
PARTIAL_PREFIX = ".partial-"
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


def _replace_directory(partial, final):
    """Renames `partial` to `final`, replacing an existing `final`."""
    final = Path(final)
    stale = final.with_name(f"{PARTIAL_PREFIX}old-{final.name}")
    if final.exists():
        shutil.rmtree(stale, ignore_errors=True)
        os.replace(final, stale)
    os.replace(partial, final)
    shutil.rmtree(stale, ignore_errors=True)


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
    checkpoints_dir = Path(checkpoints_dir)
    final = checkpoints_dir / f"checkpoint-{state.global_step}"
    partial = checkpoints_dir / f"{PARTIAL_PREFIX}{final.name}"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    if os.environ.get(KILL_HOOK_ENV) == str(state.global_step):
        os.kill(os.getpid(), signal.SIGKILL)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state.save(partial)
        _replace_directory(partial, final)
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
            raise TrainingInputError(
                f"--resume-from-checkpoint latest: no finished checkpoint in {checkpoints_dir}. Run without it to "
                "start from scratch, or give a checkpoint directory."
            )
        return checkpoints[-1]
    path = Path(resume_from)
    if not (path / STATE_FILE).is_file():
        raise TrainingInputError(
            f"--resume-from-checkpoint {path}: not a finished checkpoint (no {STATE_FILE}). Give a "
            f"`checkpoints/checkpoint-<step>` directory written by marnet-train, or `latest`."
        )
    return path


def load_checkpoint(accelerator, path):
    """Restores everything `save_checkpoint` saved; returns the trainer state."""
    accelerator.load_state(str(path))
    return TrainerState.load(path)


def save_pretrained_atomically(accelerator, model, image_processor, directory):
    """`save_pretrained` of the model and its image processor into `directory`, replacing it all at once."""
    directory = Path(directory)
    partial = directory.with_name(f"{PARTIAL_PREFIX}{directory.name}")
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
        model.save_pretrained(partial)
        image_processor.save_pretrained(partial)
        _replace_directory(partial, directory)
    accelerator.wait_for_everyone()
