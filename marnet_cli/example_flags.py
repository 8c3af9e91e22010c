"""Flags of transformers' image-classification examples that are not marnet-train options.

A command pasted from `examples/pytorch/image-classification` (`run_image_classification.py`, on `Trainer`, and
`run_image_classification_no_trainer.py`) runs as written. Flags naming a setting marnet-train has are options of
`TrainArguments` (or aliases of them); the others are handled here, before parsing, in three ways:

- translated: `--fp16` / `--bf16` become `--mixed_precision fp16` / `bf16`;
- accepted with a one-line note saying why they change nothing here (`--do_train`, `--remove_unused_columns`, ...);
- refused with a message naming what marnet-train does instead (`--hub_token`, `--model_revision`, ...).

Boolean flags take an optional value as `HfArgumentParser` reads them (`--do_eval`, `--do_eval True`).
"""

import argparse
from dataclasses import dataclass

from transformers.hf_argparser import string_to_bool

from .errors import UsageError
from .options import option_spellings


@dataclass(frozen=True)
class ExampleFlag:
    """One flag of the examples. `note(value)` -> the note for an accepted value, or None to refuse it with
    `refusal`; `translate(value)` -> the marnet-train arguments that replace it."""

    name: str
    boolean: bool = False
    note: object = None
    translate: object = None
    refusal: str = ""


def _when_true(note):
    return lambda value: note if value else None


EXAMPLE_FLAGS = (
    ExampleFlag(
        "do_train",
        boolean=True,
        note=_when_true("marnet-train always trains"),
        refusal="marnet-train always trains; evaluate a saved model with marnet-eval.",
    ),
    ExampleFlag(
        "do_eval",
        boolean=True,
        note=_when_true("marnet-train evaluates per --eval_strategy (default: every epoch) and on the test split"),
        refusal="to train without evaluations pass --eval_strategy no.",
    ),
    ExampleFlag(
        "remove_unused_columns",
        boolean=True,
        note=lambda value: "marnet-train reads only the image, label and text columns, whatever the others",
    ),
    ExampleFlag(
        "with_tracking",
        boolean=True,
        note=lambda value: (
            "marnet-train always logs to the --report_to trackers (default tensorboard; 'none' turns them off)"
        ),
    ),
    ExampleFlag(
        "load_best_model_at_end",
        boolean=True,
        note=_when_true("the output folder always holds the best model by --metric_for_best_model"),
        refusal="marnet-train always saves the best model by --metric_for_best_model to --output_dir; the last "
        "weights are in its newest checkpoints/checkpoint-<step>.",
    ),
    ExampleFlag(
        "logging_strategy",
        note=lambda value: "marnet-train logs every --logging_steps" if value == "steps" else None,
        refusal="marnet-train logs every --logging_steps optimizer steps (and every evaluation); set that instead.",
    ),
    ExampleFlag(
        "fp16",
        boolean=True,
        translate=lambda value: ["--mixed_precision", "fp16"] if value else [],
    ),
    ExampleFlag(
        "bf16",
        boolean=True,
        translate=lambda value: ["--mixed_precision", "bf16"] if value else [],
    ),
    ExampleFlag(
        "hub_token",
        refusal="a token on the command line ends up in shell history and training_args.json: set HF_TOKEN or run "
        "`hf auth login`.",
    ),
    ExampleFlag(
        "token",
        refusal="a token on the command line ends up in shell history and training_args.json: set HF_TOKEN or run "
        "`hf auth login`.",
    ),
    ExampleFlag(
        "model_revision",
        refusal="download that revision first (`hf download REPO --revision REV --local-dir DIR`) and pass DIR as "
        "--vision_model or --model_name_or_path.",
    ),
    ExampleFlag(
        "cache_dir",
        refusal="set HF_HOME (or HF_HUB_CACHE and HF_DATASETS_CACHE) for the downloads, and --text_cache_dir for "
        "the text features.",
    ),
    ExampleFlag(
        "image_processor_name",
        refusal="the image processor is the vision tower's own (--vision_model); --image_size overrides its size.",
    ),
    ExampleFlag(
        "config_name",
        refusal="a new model's config comes from --ablation, --fusion_mode and --marnet_config FIELD=VALUE.",
    ),
    ExampleFlag(
        "logging_dir",
        refusal="tracker logs go to <output_dir>/logs/<project>: choose --output_dir and --project.",
    ),
)


def _flag_parser():
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    for flag in EXAMPLE_FLAGS:
        value = {"nargs": "?", "const": True, "type": string_to_bool} if flag.boolean else {}
        parser.add_argument(*option_spellings(f"--{flag.name}"), dest=flag.name, default=None, **value)
    return parser


def handle_example_flags(argv):
    """(the arguments marnet-train parses, the notes to print) for `argv`; a [`UsageError`] for a refused flag."""
    try:
        given, rest = _flag_parser().parse_known_args(argv)
    except argparse.ArgumentError as error:
        raise UsageError(str(error)) from None
    extra, notes = [], []
    for flag in EXAMPLE_FLAGS:
        value = getattr(given, flag.name)
        if value is None:
            continue
        if flag.translate is not None:
            extra += flag.translate(value)
            continue
        if flag.note is None:  # refused whatever the value, which is not echoed (it may be a token)
            raise UsageError(f"--{flag.name} is not a marnet-train option: {flag.refusal}")
        note = flag.note(value)
        if note is None:
            raise UsageError(f"--{flag.name} {value} is not a marnet-train option: {flag.refusal}")
        notes.append(f"--{flag.name} {value} has no effect here: {note}.")
    if given.fp16 and given.bf16:
        raise UsageError("--fp16 and --bf16 both set: choose one (marnet-train's --mixed_precision fp16 or bf16).")
    if extra and any(arg.split("=")[0] in option_spellings("--mixed_precision") for arg in rest):
        raise UsageError("--fp16/--bf16 and --mixed_precision both set: keep one.")
    return rest + extra, notes
