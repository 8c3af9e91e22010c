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
```

`metrics.json` holds fractions in [0, 1]: `{"top1", "top5", "split", "per_split": {split: {"top1", "top5", "loss",
"num_samples"}}, ...}`; marnet-eval writes the same layout. Its presence means the run finished: it is written after
everything else.
"""

import json
import math
import shutil
from pathlib import Path

from .errors import CLIError
from .files import atomic_files, atomic_write_text

METRICS_NAME = "metrics.json"
TRAINING_ARGS_NAME = "training_args.json"
LOGS_DIR = "logs"
HISTORY_NAME = "history.jsonl"
CHECKPOINTS_DIR = "checkpoints"
BEST_MODEL_DIR = "best-model"
HUB_REPO_DIR = "hub_repo"
# training_args.json keys that the model card states.
REQUIRED_TRAINING_ARGS = ("dataset", "vision_model", "text_encoder", "ablation")


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

    def append_history(self, record):
        """Add one record (a dict with `step`) to logs/history.jsonl."""
        with open(self.history_file, "a", encoding="utf-8") as history:
            history.write(json.dumps(record) + "\n")

    def history(self):
        """The records of logs/history.jsonl, in order (none before the first log)."""
        if not self.history_file.is_file():
            return []
        return [json.loads(line) for line in self.history_file.read_text(encoding="utf-8").splitlines()]

    def truncate_history(self, global_step):
        """Drop the records a killed run wrote after the checkpoint at `global_step`, which training resumes from."""
        kept = [record for record in self.history() if record["step"] <= global_step]
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
    if not path.is_file():
        raise CLIError(f"Missing {path}: it is written by {produced_by}.")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CLIError(f"{path} is not valid JSON ({error}); re-create it with {produced_by}.") from None
    if not isinstance(value, dict):
        raise CLIError(f"{path} must hold a JSON object, got {type(value).__name__}.")
    return value


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
