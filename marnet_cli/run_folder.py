"""The run folder: what `marnet-train --output_dir` writes, `marnet-eval` measures into and `marnet-publish` reads.

```
<output_dir>/
  config.json, model.safetensors, preprocessor_config.json, *.py   the best model (`save_pretrained`)
  training_args.json     every resolved option, and what Accelerate actually used (mixed precision, processes, ...)
  metrics.json           written last: top1/top5 of `split`, `per_split` details, throughput, steps
  logs/history.jsonl     one JSON record per logged step or evaluation (`step` in every record)
  logs/<project>/        tracker files (TensorBoard events)
  checkpoints/checkpoint-<step>/, checkpoints/best-model/
  hub_repo/              with --push_to_hub --hub_dry_run: the repo folder marnet-publish would upload
  .marnet-train.lock     locked while a marnet-train run writes the folder (see `RunFolder.claim`)
```

`metrics.json` holds fractions in [0, 1]: `{"top1", "top5", "split", "per_split": {split: {"top1", "top5", "loss",
"num_samples"}}, ...}`; marnet-eval writes the same layout. Its presence means the run finished: it is written after
everything else.
"""

import errno
import fcntl
import json
import logging
import math
import os
import shutil
from pathlib import Path

from .errors import CLIError, UsageError
from .files import atomic_files, atomic_write_text, file_kind

logger = logging.getLogger(__name__)

METRICS_NAME = "metrics.json"
TRAINING_ARGS_NAME = "training_args.json"
LOGS_DIR = "logs"
HISTORY_NAME = "history.jsonl"
CHECKPOINTS_DIR = "checkpoints"
BEST_MODEL_DIR = "best-model"
HUB_REPO_DIR = "hub_repo"
LOCK_NAME = ".marnet-train.lock"
# The files of a run folder that a run writes: its records and the saved model (`save_pretrained`: config, weights,
# image processor, model code for remote-code users).
PREVIOUS_RUN_FILES = (
    METRICS_NAME,
    TRAINING_ARGS_NAME,
    "config.json",
    "preprocessor_config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "*.py",
)
# training_args.json keys that the model card states.
REQUIRED_TRAINING_ARGS = ("dataset", "vision_model", "text_encoder", "ablation")
# Options naming a dataset or model that is either a Hub id or a local path; training_args.json's `local_sources`
# lists those that were local paths where the run started (a relative path is not a Hub id).
SOURCE_OPTIONS = ("dataset", "vision_model", "text_encoder", "model_name_or_path")


def local_sources(options):
    """The [`SOURCE_OPTIONS`] of `options` (a dict) whose value is a local path here, rather than a Hub id."""
    return [name for name in SOURCE_OPTIONS if options.get(name) and Path(options[name]).expanduser().exists()]


class RunFolder:
    """Paths and records of one run folder (see the module docstring)."""

    def __init__(self, path):
        self.path = Path(path)
        self.metrics_file = self.path / METRICS_NAME
        self.training_args_file = self.path / TRAINING_ARGS_NAME
        self.logs_dir = self.path / LOGS_DIR
        self.history_file = self.logs_dir / HISTORY_NAME
        self.checkpoints_dir = self.path / CHECKPOINTS_DIR
        self.best_model_dir = self.checkpoints_dir / BEST_MODEL_DIR
        self.hub_repo_dir = self.path / HUB_REPO_DIR
        self.lock_file = self.path / LOCK_NAME
        self._lock = None

    def claim(self):
        """Takes the folder for this process: a second marnet-train on it is refused until [`release`] or until this
        process ends, however it ends (an advisory `flock` on `.marnet-train.lock`, which the kernel drops with the
        process: a crashed run never leaves the folder locked). Creates the folder."""
        self.path.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(descriptor)
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                logger.warning(
                    f"Cannot lock {self.lock_file} ({error.strerror}); this filesystem offers no locks, so a second "
                    "run started on the same --output_dir would not be refused."
                )
                return
            raise UsageError(
                f"--output_dir {self.path} is in use by another marnet-train run (it holds {LOCK_NAME}). Wait for "
                "it to finish or stop it, or choose another directory."
            ) from None
        self._lock = descriptor

    def release(self):
        """Gives the folder back (see [`claim`]); nothing to do when it was not claimed."""
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def clear_previous_run(self):
        """Removes what a previous run wrote here (`--overwrite_output_dir`): its checkpoints, logs and Hub folder,
        its records and its saved model, so that an overwritten folder never mixes two runs, even when the new run
        fails before it saves anything. Other files are left."""
        for name in (CHECKPOINTS_DIR, LOGS_DIR, HUB_REPO_DIR):
            shutil.rmtree(self.path / name, ignore_errors=True)
        for pattern in PREVIOUS_RUN_FILES:
            for path in self.path.glob(pattern):
                if path.is_file() or path.is_symlink():
                    path.unlink()

    def entries(self):
        """What the folder holds, its lock file aside (an empty folder that a run once claimed is still empty)."""
        return sorted(path.name for path in self.path.iterdir() if path.name != LOCK_NAME)

    def append_history(self, record):
        """Add one record (a dict with `step`) to logs/history.jsonl."""
        with open(self.history_file, "a", encoding="utf-8") as history:
            history.write(json.dumps(record) + "\n")

    def history(self):
        """The records of logs/history.jsonl, in order (none before the first log). A last line torn by a run killed
        while writing it is left out with a warning; any other unreadable line is a [`CLIError`] naming it."""
        if not self.history_file.is_file():
            return []
        lines = self.history_file.read_text(encoding="utf-8").splitlines()
        records = []
        for number, line in enumerate(lines, 1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                if number < len(lines):
                    raise CLIError(
                        f"{self.history_file}, line {number}: not a JSON record ({error}). Remove or fix that line."
                    ) from None
                logger.warning(
                    f"{self.history_file}: the last line ({number}) is incomplete, written by a run killed in the "
                    "middle of it; it is dropped."
                )
        return records

    def truncate_history(self, global_step, evaluated_step):
        """Drop the records a killed run wrote after the checkpoint at `global_step`, which training resumes from:
        those of later steps, and an evaluation at `global_step` that the checkpoint does not hold (its
        `evaluated_step` is older), which the resumed run makes again."""

        def written_before_the_checkpoint(record):
            evaluation = any(key.startswith("eval_") for key in record)
            return record["step"] < global_step or (
                record["step"] == global_step and (not evaluation or evaluated_step == global_step)
            )

        kept = [record for record in self.history() if written_before_the_checkpoint(record)]
        atomic_write_text(self.history_file, "".join(json.dumps(record) + "\n" for record in kept))

    def write_outputs(self, model_dir, training_args, metrics):
        """Copies the saved model's files from `model_dir`, then writes training_args.json and, last, metrics.json,
        each file replaced all at once."""
        with atomic_files(self.path, last=(METRICS_NAME,)) as staging:
            for path in Path(model_dir).iterdir():
                shutil.copy2(path, staging / path.name)
            (staging / TRAINING_ARGS_NAME).write_text(json.dumps(training_args, indent=2) + "\n", encoding="utf-8")
            (staging / METRICS_NAME).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")

    def read_metrics(self):
        """metrics.json, checked: accuracies are fractions, `split` names the reported split, per_split agrees."""
        return check_metrics(
            read_json_object(self.metrics_file, "marnet-train (after its final evaluation)"), self.metrics_file
        )

    def read_training_args(self):
        """training_args.json, checked to hold the keys the model card states."""
        training_args = read_json_object(self.training_args_file, "marnet-train")
        missing = [name for name in REQUIRED_TRAINING_ARGS if name not in training_args]
        if missing:
            raise CLIError(f"{self.training_args_file} lacks {missing}, which the model card states.")
        return training_args


def classification_metrics(per_split, split, **extra):
    """The metrics.json layout: `top1`/`top5` of `split` on top, every split's metrics in `per_split`, then `extra`."""
    return {
        "top1": per_split[split]["top1"],
        "top5": per_split[split]["top5"],
        "split": split,
        "per_split": per_split,
        **extra,
    }


def read_json_object(path, produced_by):
    """The JSON object in `path`; `produced_by` says which tool writes the file, for the error message."""
    path = Path(path)
    if not path.exists():
        raise CLIError(f"Missing {path}: it is written by {produced_by}.")
    if not path.is_file():
        raise CLIError(
            f"{path} is a {file_kind(path.stat().st_mode)}, not a regular file: it is written by {produced_by}."
        )
    try:
        value = json.loads(path.read_text(encoding="utf-8-sig"))  # a byte-order mark is no error
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CLIError(f"{path} is not valid JSON ({error}); re-create it with {produced_by}.") from None
    if not isinstance(value, dict):
        raise CLIError(f"{path} must hold a JSON object, got {type(value).__name__}.")
    nonfinite = nonfinite_keys(value)
    if nonfinite:
        raise CLIError(
            f"{path} holds non-finite numbers (NaN or infinity) at {', '.join(nonfinite[:5])}: the run that wrote it "
            "diverged, and strict JSON (the Hub's) cannot hold them. Fix the run and write the file again."
        )
    return value


def nonfinite_keys(value, prefix=""):
    """The dotted keys of the NaN and infinite numbers in a parsed JSON value, in order."""
    if isinstance(value, float) and not math.isfinite(value):
        return [prefix or "(the value)"]
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return []
    return [key for name, item in items for key in nonfinite_keys(item, f"{prefix}.{name}" if prefix else str(name))]


def _check_score(value, name, path):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0 or math.isnan(value):
        raise CLIError(f"{path}: {name!r} must be an accuracy fraction in [0, 1], got {value!r}.")


def check_metrics(metrics, path):
    """`metrics` if it follows the layout (see the module docstring), else a [`CLIError`] naming `path`."""
    for name in ("top1", "top5"):
        if name not in metrics:
            raise CLIError(f"{path} has no {name!r}: the card reports only measured accuracies.")
        _check_score(metrics[name], name, path)
    if not isinstance(metrics.get("split"), str):
        raise CLIError(f"{path}: 'split' must name the evaluated split (e.g. 'test'), got {metrics.get('split')!r}.")
    per_split = metrics.get("per_split", {})
    if not isinstance(per_split, dict):
        raise CLIError(f"{path}: 'per_split' must map split names to metrics, got {type(per_split).__name__}.")
    for split, values in per_split.items():
        if not isinstance(values, dict):
            raise CLIError(f"{path}: per_split.{split} must be an object of metrics, got {values!r}.")
        for name in ("top1", "top5"):
            if name in values:
                _check_score(values[name], f"per_split.{split}.{name}", path)
    reported = per_split.get(metrics["split"], {})
    for name in ("top1", "top5"):
        if name in reported and reported[name] != metrics[name]:
            raise CLIError(
                f"{path}: {name}={metrics[name]} disagrees with "
                f"per_split.{metrics['split']}.{name}={reported[name]}: fix the file so the card reports one "
                f"measured number."
            )
    return metrics
