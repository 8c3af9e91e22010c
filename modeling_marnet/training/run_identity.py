"""What a checkpoint records of the run that wrote it (`run.json`), and the check that a resumed run continues that
run: the same dataset (label names and number of training rows) and the same settings.

A different label set or training split is refused: id2label would contradict the data. A setting that changes what
the continuation computes (batch size, learning rate, seed, tower, ...) is refused too, unless
`--allow_changed_arguments`: the run then continues with a warning that it is not an exact continuation. Settings
that only say where to write, what to log or how many workers load the data are not compared.
"""

import json
from pathlib import Path

from accelerate.logging import get_logger

from marnet_cli.errors import CLIError, UsageError

logger = get_logger(__name__)

RUN_FILE = "run.json"
# training_args.json entries that do not change what the run computes.
NEUTRAL_SETTINGS = frozenset(
    {
        "config_file",
        "dataset",  # the dataset is recognised by its labels and rows, wherever it lies now
        "local_sources",
        "train_examples",
        "output_dir",
        "overwrite_output_dir",
        "resume_from_checkpoint",
        "allow_changed_arguments",
        "text_cache_dir",
        "dataloader_num_workers",
        "per_device_eval_batch_size",
        "report_to",
        "run_name",
        "project",
        "logging_steps",
        "gradient_norm_steps",
        "push_to_hub",
        "hub_model_id",
        "hub_private_repo",
        "hub_revision",
        "hub_dry_run",
    }
)


def run_record(hyperparameters, label_names):
    """The run.json of a run: its label names, its number of training rows and every setting that changes what it
    computes (`hyperparameters`: the training_args.json record)."""
    return {
        "label_names": list(label_names),
        "train_examples": hyperparameters["train_examples"],
        "settings": {key: value for key, value in hyperparameters.items() if key not in NEUTRAL_SETTINGS},
    }


def save_run_record(directory, record):
    (Path(directory) / RUN_FILE).write_text(json.dumps(record, indent=2))


def check_continuation(checkpoint, record, allow_changed_arguments):
    """Refuses to resume from `checkpoint` a run that is not the one that wrote it (see the module docstring)."""
    path = Path(checkpoint) / RUN_FILE
    if not path.is_file():
        logger.warning(
            f"{checkpoint} records no run ({RUN_FILE}; older versions wrote none): whether this run continues "
            "the same dataset and settings is not checked.",
            main_process_only=True,
        )
        return
    saved = json.loads(path.read_text())
    if saved["label_names"] != record["label_names"]:
        raise CLIError(
            f"--resume_from_checkpoint {checkpoint}: the checkpoint was trained on the labels "
            f"{_short(saved['label_names'])}, this dataset has {_short(record['label_names'])}. Resume with the "
            "dataset of that run, or start a new run (another --output_dir, or --overwrite_output_dir)."
        )
    if saved["train_examples"] != record["train_examples"]:
        raise CLIError(
            f"--resume_from_checkpoint {checkpoint}: the checkpoint's run trained on {saved['train_examples']} rows, "
            f"this one has {record['train_examples']} (another dataset, split or --max_train_samples). Resume with "
            "the data of that run, or start a new run."
        )
    changed = {
        key: (saved["settings"].get(key), record["settings"].get(key))
        for key in sorted(set(saved["settings"]) | set(record["settings"]))
        if saved["settings"].get(key) != record["settings"].get(key)
    }
    if not changed:
        return
    listed = "; ".join(f"{key}: {old!r} then, {new!r} now" for key, (old, new) in changed.items())
    if not allow_changed_arguments:
        raise UsageError(
            f"--resume_from_checkpoint {checkpoint}: this run's settings differ from the run that wrote the "
            f"checkpoint ({listed}), so it would not continue that run exactly. Resume with the same settings, or "
            "pass --allow_changed_arguments to continue anyway."
        )
    logger.warning(
        f"Resuming with changed settings ({listed}): the run continues, but not as the interrupted run would have.",
        main_process_only=True,
    )


def _short(names):
    return f"{names[:5]}{' ...' if len(names) > 5 else ''} ({len(names)})"
