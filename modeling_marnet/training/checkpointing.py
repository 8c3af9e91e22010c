"""Resumable checkpoints and saved models, written all at once (`marnet_cli.files`): a run killed while saving never
leaves a half-written `checkpoint-<step>` that `--resume_from_checkpoint latest` could pick, nor a half-written best
model.

A checkpoint holds `accelerator.save_state` (model weights as safetensors, optimizer, every process's RNG states), our
own state as JSON (`trainer_state.json`: step, epoch position, best metric, early-stopping counter, throughput
counters; `scheduler.json`: the learning-rate schedule's position) and, written last, `manifest.json`: the size and
SHA-256 of every file. Resuming verifies the manifest, so a truncated or damaged checkpoint is never loaded, and never
runs code from a checkpoint: nothing is registered with `accelerator.register_for_checkpointing` (Accelerate unpickles
such objects in full), and what Accelerate reads back (optimizer, RNG states) it reads with `torch.load(...,
weights_only=True)`, which refuses anything but tensors and plain values.

Models are saved with full weights whatever the parallelism: `accelerator.get_state_dict` gathers DeepSpeed ZeRO-3
and FSDP shards on the main process, which writes them with `save_pretrained(state_dict=...)`.

Test hook: with the environment variable `MARNET_TEST_KILL_DURING_CHECKPOINT=<step>` the process SIGKILLs itself
in the middle of writing that step's checkpoint (state saved, not yet renamed). The fault-tolerance test uses it.
"""

import dataclasses
import hashlib
import json
import os
import pickle
import re
import shutil
import signal
from pathlib import Path

from accelerate.logging import get_logger
from accelerate.utils import load as accelerate_load

from marnet_cli.errors import CLIError
from marnet_cli.files import (
    PARTIAL_PREFIX,
    atomic_directory,
    commit_directory,
    remove_partial_entries,
    staging_directory,
)

from .run_identity import save_run_record
from .text_features import MARNetWithTextEncoder

logger = get_logger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"
SCHEDULER_FILE = "scheduler.json"
MANIFEST_FILE = "manifest.json"
RANDOM_STATES_PATTERN = re.compile(r"^random_states_(\d+)\.pkl$")  # Accelerate's, one per process
# Accelerate's files for objects given to `register_for_checkpointing`, which it unpickles in full (code can run).
# marnet-train never writes them.
UNSAFE_PATTERN = re.compile(r"^custom_checkpoint_\d+\.pkl$")
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
    skipped_steps: int = 0  # optimizer steps left out for a non-finite loss (--skip_nonfinite_loss)
    evaluated_step: int = -1  # the step of the last evaluation whose outcome this state holds (-1: none)

    def save(self, directory):
        (Path(directory) / STATE_FILE).write_text(json.dumps(dataclasses.asdict(self), indent=2))

    @classmethod
    def load(cls, directory):
        """The state saved in `directory`; a [`CLIError`] naming the file when it is not a complete trainer state."""
        path = Path(directory) / STATE_FILE
        try:
            values = json.loads(path.read_text())
            state = cls(**values)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError) as error:
            raise CLIError(f"{path} is not a trainer state written by marnet-train ({error}).") from None
        for name in ("global_step", "epoch", "batches_in_epoch"):
            if isinstance(getattr(state, name), bool) or not isinstance(getattr(state, name), int):
                raise CLIError(f"{path}: {name!r} must be an integer, got {getattr(state, name)!r}.")
        return state


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


def file_digest(path):
    """{"size", "sha256"} of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return {"size": os.path.getsize(path), "sha256": digest.hexdigest()}


def write_manifest(directory):
    """manifest.json: the size and SHA-256 of every other file under `directory` (relative POSIX names)."""
    directory = Path(directory)
    files = sorted(path for path in directory.rglob("*") if path.is_file() and path.name != MANIFEST_FILE)
    manifest = {"files": {path.relative_to(directory).as_posix(): file_digest(path) for path in files}}
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))


def checkpoint_problems(path):
    """Why the checkpoint `path` cannot be resumed from: [] when every file its manifest lists is there with the
    recorded size and SHA-256 and its trainer state is complete. Random-state files are left to
    [`load_checkpoint`], which resumes without them (with a warning)."""
    path = Path(path)
    try:
        listed = json.loads((path / MANIFEST_FILE).read_text())["files"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
        return [f"no readable {MANIFEST_FILE} ({type(error).__name__}: {error})"]
    problems = [
        f"it holds {file.name}, a pickle that marnet-train never writes and that Accelerate would unpickle in full "
        "(which can run code)"
        for file in sorted(path.iterdir())
        if UNSAFE_PATTERN.match(file.name)
    ]
    for name, expected in listed.items():
        file = path / name
        if RANDOM_STATES_PATTERN.match(name):
            continue
        if not file.is_file():
            problems.append(f"{name} is missing")
        elif file.stat().st_size != expected["size"]:
            problems.append(f"{name} has {file.stat().st_size} bytes, {expected['size']} were written")
        elif file_digest(file)["sha256"] != expected["sha256"]:
            problems.append(f"{name} differs from what was written (SHA-256 mismatch)")
    if not problems:
        try:
            TrainerState.load(path)
        except CLIError as error:
            problems.append(str(error))
    return problems


def save_checkpoint(accelerator, checkpoints_dir, state, scheduler, keep_last, run_record):
    """Saves the full training state as `checkpoint-<global_step>`, with the `run_record` of the run that wrote it
    (`run_identity.py`), and deletes all but the last `keep_last`."""
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
        (partial / SCHEDULER_FILE).write_text(json.dumps(scheduler.state_dict(), indent=2))
        save_run_record(partial, run_record)
        write_manifest(partial)
        commit_directory(partial, final)
        for old in completed_checkpoints(checkpoints_dir)[:-keep_last]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def remove_partial_checkpoints(checkpoints_dir):
    """Cleans up what a killed run left half-written; a best model it was replacing gets its previous copy back."""
    for name in remove_partial_entries(checkpoints_dir):
        logger.warning(
            f"Restored {Path(checkpoints_dir) / name}: the previous run was killed while replacing it.",
            main_process_only=True,
        )


def resolve_checkpoint(resume_from, checkpoints_dir):
    """`latest` -> the newest intact checkpoint (damaged newer ones are named in a warning); a path -> that
    checkpoint, verified. A [`CLIError`] when there is none to resume from."""
    if resume_from != "latest":
        path = Path(resume_from)
        if not (path / STATE_FILE).is_file():
            raise CLIError(
                f"--resume_from_checkpoint {path}: not a finished checkpoint (no {STATE_FILE}). Give a "
                "`checkpoints/checkpoint-<step>` directory written by marnet-train, or `latest`."
            )
        problems = checkpoint_problems(path)
        if problems:
            raise CLIError(
                f"--resume_from_checkpoint {path} is damaged: {'; '.join(problems)}. Resume from another checkpoint "
                "(`latest` takes the newest intact one)."
            )
        return path
    checkpoints = completed_checkpoints(checkpoints_dir)
    if not checkpoints:
        raise CLIError(
            f"--resume_from_checkpoint latest: no finished checkpoint in {checkpoints_dir}. Run without it to "
            "start from scratch, or give a checkpoint directory."
        )
    damaged = []
    for path in reversed(checkpoints):
        problems = checkpoint_problems(path)
        if not problems:
            for name, reasons in damaged:
                logger.warning(
                    f"Not resuming from {name}, which is damaged: {'; '.join(reasons)}. Resuming from the newest "
                    f"intact checkpoint, {path}.",
                    main_process_only=True,
                )
            return path
        damaged.append((path, problems))
    raise CLIError(
        f"--resume_from_checkpoint latest: every checkpoint in {checkpoints_dir} is damaged ("
        + "; ".join(f"{path.name}: {', '.join(reasons)}" for path, reasons in damaged)
        + "). Run without --resume_from_checkpoint to start over (with --overwrite_output_dir)."
    )


def random_states_problem(path, process_index):
    """Why this process's RNG states in checkpoint `path` cannot be restored, or None."""
    name = f"random_states_{process_index}.pkl"
    file = Path(path) / name
    if not file.is_file():
        return f"it has no {name}"
    listed = json.loads((Path(path) / MANIFEST_FILE).read_text())["files"].get(name)
    if listed is None or file_digest(file) != listed:
        return f"its {name} differs from what was written"
    try:
        accelerate_load(file)  # weights_only=True: tensors and plain values only
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as error:
        return f"its {name} cannot be read safely ({_first_sentence(error)})"
    return None


def _first_sentence(error):
    return f"{type(error).__name__}: {str(error).splitlines()[0].split('. ')[0]}"


def load_checkpoint(accelerator, path, scheduler):
    """Restores everything [`save_checkpoint`] saved, reading no code; returns the trainer state. Without this
    process's RNG states the run resumes, with a warning that it does not continue exactly."""
    problem = random_states_problem(path, accelerator.process_index)
    if problem is not None:
        logger.warning(
            f"Checkpoint {path}: {problem}, so process {accelerator.process_index} resumes with fresh random number "
            "generators. The run continues but is NOT an exact continuation: diffusion noise and dropout differ from "
            "an uninterrupted run, and so will the final weights.",
            main_process_only=False,
        )
    try:
        accelerator.load_state(str(path))
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, KeyError, ValueError) as error:
        raise CLIError(
            f"Checkpoint {path} cannot be loaded ({_first_sentence(error)}). Only "
            "tensors and plain values are read from a checkpoint, never code; resume from another checkpoint."
        ) from None
    scheduler.load_state_dict(json.loads((Path(path) / SCHEDULER_FILE).read_text()))
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
