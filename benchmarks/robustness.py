"""How accuracy holds up under image corruptions: run folders scored on a clean split and on every corruption and
severity of `modeling_marnet.corruptions`, rows compared with a baseline seed by seed.

Each `--row NAME=DIR` is a row of the comparison: DIR is one run folder (a saved image classifier with its image
processor, e.g. a marnet-train output) or a folder of them, one per seed, named `seed-N` (the layout
`benchmarks/accuracy.py` writes). Rows are paired by seed with the first row (the baseline) and must have the same
seeds. Every image is decoded once, corrupted once per (corruption, severity) and preprocessed once per image
processor, through the same data path as `marnet-eval --corruption NAME --severity K`; every model then scores the
same pixels.

Per (row, seed) the JSON holds top-1 on the clean split and on each corruption and severity, for the model's logits
and, for MARNet, each branch (`visual`: the classifier over x_v; `reconstruction`: the classifier over x_CDR). The
summary gives, per row, the mean over seeds with its 95 % interval of: clean top-1, the mean over every corruption
and severity (`corrupted`), each corruption (mean over severities), each family, and each severity (mean over the
corruptions, `at_severity/S`, and over each family's, `at_severity/S/FAMILY`); the paired differences to the
baseline with their 95 % intervals; the seed-to-seed std per family (stability) and, from the paired std of the
`corrupted` difference, how many seeds an interval of +-`--target-half-width` points would need.

`--every K` scores every K-th image (a class-balanced subset of a split sorted by class). `--cache-dir DIR` keeps
each model's scores (one JSON file per run folder, variant, split and image count, keyed by
the weights file's size and modification time): a later call with more seeds or rows scores only what is new, and a
level every model already has is not even prepared. Models run channels-last (1.4-1.7x faster on CPU for
convolutional towers, the same predictions up to float rounding).

`--variant NAME:FIELD=VALUE[,FIELD=VALUE]` adds, for every row whose model config has those fields (or only the rows of
`--variant-rows`), a row scored with them changed at inference (e.g. `--variant ddim:sampler=ddim`,
`--variant visual:classifier_input=visual`).

    python benchmarks/robustness.py --dataset DATA --split test \\
        --row baseline=runs/shared-train0.25/baseline/lr0.001-x1 \\
        --row marnet=runs/original-train0.25/marnet/lr0.001-x1 \\
        --output benchmarks/results/robustness.json      # -> robustness.json, robustness.png
"""

import argparse
import hashlib
import json
import platform
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import torch
from torch.utils.data import DataLoader

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification  # noqa: E402

from figures import pyplot, save_figure  # noqa: E402
from marnet_cli.files import atomic_write_json  # noqa: E402
from modeling_marnet.corruptions import CORRUPTIONS, FAMILIES, SEVERITIES, ImageCorruption  # noqa: E402
from modeling_marnet.training.batches import (  # noqa: E402
    ImagePreprocessing,
    ImageTextExamples,
    MARNetCollator,
    model_inputs,
)
from modeling_marnet.training.data import check_split, load_image_dataset  # noqa: E402
from paired_stats import format_interval, interval, paired_differences, seeds_for_half_width  # noqa: E402

CLEAN = "clean"
BRANCHES = {"visual": "visual_logits", "reconstruction": "reconstruction_logits"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, help="save_to_disk folder, Parquet file(s) or Hub id")
    parser.add_argument("--split", default="test")
    parser.add_argument("--image-column", default="image")
    parser.add_argument("--label-column", default="label")
    parser.add_argument(
        "--row", action="append", required=True, metavar="NAME=DIR", help="a row; the first is the baseline"
    )
    parser.add_argument(
        "--seeds", nargs="+", type=int, help="score these seeds of every row (default: the seeds the rows have)"
    )
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:FIELD=VALUE[,FIELD=VALUE]")
    parser.add_argument("--variant-rows", nargs="+", metavar="ROW", help="rows the variants apply to (default: all)")
    parser.add_argument("--corruptions", nargs="+", choices=list(CORRUPTIONS), default=list(CORRUPTIONS))
    parser.add_argument("--severities", nargs="+", type=int, choices=SEVERITIES, default=list(SEVERITIES))
    parser.add_argument("--max-samples", type=int, help="the first N rows of the split (default: all)")
    parser.add_argument(
        "--every",
        type=int,
        default=1,
        metavar="K",
        help="every K-th row of the split (after --max-samples): a subset with every class of a class-sorted split",
    )
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--cache-dir", type=Path, help="keep each model's scores here and reuse them (see above)")
    parser.add_argument("--target-half-width", type=float, default=1.0, help="points; for the seeds-needed estimate")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "robustness.json")
    args = parser.parse_args(argv)
    args.rows = dict(_row(parser, text) for text in args.row)
    if args.seeds:
        for row, seeds in args.rows.items():
            if missing := sorted(set(args.seeds) - set(seeds)):
                parser.error(f"--seeds: row {row} has no finished run (config.json) for seeds {missing}.")
            args.rows[row] = {seed: seeds[seed] for seed in args.seeds}
    baseline, *others = args.rows
    for row in others:
        if set(args.rows[row]) != set(args.rows[baseline]):
            parser.error(
                f"--row {row}: rows are paired by seed and must have the same seeds: {sorted(args.rows[row])} against "
                f"the baseline's {sorted(args.rows[baseline])} (a seed whose run did not finish has no config.json)."
            )
    args.variants = dict(_variant(parser, text) for text in args.variant)
    if unknown := sorted(set(args.variant_rows or ()) - set(args.rows)):
        parser.error(f"--variant-rows: {unknown} are not rows; the rows are {list(args.rows)}.")
    return args


def _row(parser, text):
    name, separator, folder = text.partition("=")
    if not separator or not name:
        parser.error(f"--row {text!r}: expected NAME=DIR.")
    seeds = seed_folders(Path(folder))
    if not seeds:
        parser.error(f"--row {text!r}: {folder} holds no config.json and no seed-N folder with one.")
    return name, seeds


def _variant(parser, text):
    name, separator, assignments = text.partition(":")
    changes = dict(item.split("=", 1) for item in assignments.split(",") if "=" in item)
    if not separator or not changes or len(changes) != len(assignments.split(",")):
        parser.error(f"--variant {text!r}: expected NAME:FIELD=VALUE[,FIELD=VALUE].")
    return name, {
        key: json.loads(value) if re.fullmatch(r"[-\d.]+|true|false", value) else value
        for key, value in changes.items()
    }


def seed_folders(folder):
    """{seed: run folder} of a folder of `seed-N` run folders, or {0: folder} for one run folder."""
    if (folder / "config.json").is_file():
        return {0: folder}
    found = {}
    for child in sorted(folder.glob("seed-*")):
        match = re.fullmatch(r"seed-(\d+)", child.name)
        if match and (child / "config.json").is_file():
            found[int(match.group(1))] = child
    return found


def levels(args):
    """("clean", 0), then (corruption, severity) for each requested one."""
    return [(CLEAN, 0)] + [(name, severity) for name in args.corruptions for severity in args.severities]


@dataclass
class ScoredModel:
    """One (row, seed) to score: its run folder, the config changes of its variant ({} for none), its image
    processor, the model itself once loaded, its top-1 per level key (from the cache or scored here) and its cache
    file."""

    row: str
    seed: int
    folder: Path
    changes: dict
    processor: object
    model: object = None
    top1: dict = field(default_factory=dict)
    cache: Path | None = None  # its --cache-dir file

    def load(self):
        if self.model is None:  # the changes given at loading: fields that decide which modules are built apply too
            model = AutoModelForImageClassification.from_pretrained(self.folder, **self.changes).eval()
            self.model = model.to(memory_format=torch.channels_last)
        return self.model


def load_models(args):
    """[ScoredModel] with every variant's rows after its source row (models load when first scored)."""
    models = []
    for row, seeds in args.rows.items():
        for seed, folder in seeds.items():
            processor = AutoImageProcessor.from_pretrained(folder)
            models.append(ScoredModel(row, seed, folder, {}, processor))
            if not args.variants or (args.variant_rows is not None and row not in args.variant_rows):
                continue
            config = AutoConfig.from_pretrained(folder)
            for variant, changes in args.variants.items():
                if all(hasattr(config, name) for name in changes):
                    models.append(ScoredModel(f"{row}[{variant}]", seed, folder, changes, processor))
    return models


def cache_file(args, entry):
    """The cache file of one model's scores, or None without --cache-dir. The key changes when the weights, the
    variant, the dataset, the split or the number of images change."""
    if args.cache_dir is None:
        return None
    weights = sorted(entry.folder.glob("*.safetensors")) or sorted(entry.folder.glob("*.bin"))
    stamp = [(w.name, w.stat().st_size, w.stat().st_mtime_ns) for w in weights]
    key = [str(entry.folder.resolve()), stamp, entry.changes, str(args.dataset), args.split, args.max_samples]
    key += [args.every] if args.every > 1 else []  # keys written before --every existed stay valid
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return args.cache_dir / f"{digest}.json"


def batches(split, args, processor, level):
    """The split's (pixel_values (B, 3, h, w), labels (B,)) batches under `level`, as marnet-eval prepares them."""
    name, severity = level
    corruption = None if name == CLEAN else ImageCorruption(name, severity)
    preprocessing = ImagePreprocessing(processor, augmentation=corruption)
    examples = ImageTextExamples(split, args.image_column, args.label_column, preprocessing, split=args.split)
    normalize = model_inputs(processor, preprocessing)
    loader = DataLoader(examples, batch_size=args.batch_size, collate_fn=MARNetCollator())
    return [
        (batch["pixel_values"].contiguous(memory_format=torch.channels_last), batch["labels"])
        for batch in map(normalize, loader)
    ]


@torch.inference_mode()
def top1_per_branch(model, prepared):
    """{"logits": top-1 %, and "visual"/"reconstruction" for the branches the model returns}."""
    correct, total = {}, 0
    for pixel_values, labels in prepared:
        output = model(pixel_values=pixel_values)
        heads = {"logits": output.logits}
        heads.update({branch: getattr(output, key, None) for branch, key in BRANCHES.items()})
        for head, logits in heads.items():
            if logits is not None:
                correct[head] = correct.get(head, 0) + (logits.argmax(-1) == labels).sum().item()
        total += len(labels)
    return {head: 100 * count / total for head, count in correct.items()}


def score(args):
    """{row: {seed: {level key: {head: top-1 %}}}} over every level, and the number of images."""
    split = check_split(load_image_dataset(args.dataset), args.split, "--split")
    if args.max_samples:
        split = split.select(range(min(args.max_samples, len(split))))
    if args.every > 1:
        split = split.select(range(0, len(split), args.every))
    models = load_models(args)
    for entry in models:
        entry.cache = cache_file(args, entry)
        if entry.cache is not None and entry.cache.is_file():
            entry.top1 = json.loads(entry.cache.read_text())
    groups = {}
    for entry in models:
        groups.setdefault(entry.processor.to_json_string(), []).append(entry)
    for level in levels(args):
        key, started, scored = level_key(level), time.perf_counter(), 0
        for group in groups.values():
            missing = [entry for entry in group if key not in entry.top1]
            if not missing:
                continue
            prepared = batches(split, args, group[0].processor, level)
            for entry in missing:
                entry.top1[key] = top1_per_branch(entry.load(), prepared)
                scored += 1
                if entry.cache is not None:
                    atomic_write_json(entry.cache, entry.top1)  # an interrupted call keeps what it scored
        print(f"{key}: {scored} of {len(models)} models scored in {time.perf_counter() - started:.1f} s", flush=True)
    scores = {}
    for entry in models:
        scores.setdefault(entry.row, {})[entry.seed] = {
            level_key(level): entry.top1[level_key(level)] for level in levels(args)
        }
    return scores, len(split)


def level_key(level):
    name, severity = level
    return CLEAN if name == CLEAN else f"{name}/{severity}"


def seed_summary(per_level, head, args):
    """One seed's top-1 of `head`: clean, mean over every corruption and severity, per corruption, per family, per
    level, and per severity (`at_severity/S`: mean over the corruptions; `at_severity/S/FAMILY`: over a family's)."""

    def mean_of(names, severities=args.severities):
        return statistics.fmean(per_level[f"{name}/{s}"][head] for name in names for s in severities)

    families = {
        family: [name for name in args.corruptions if CORRUPTIONS[name].family == family] for family in FAMILIES
    }
    families = {family: members for family, members in families.items() if members}
    metrics = {CLEAN: per_level[CLEAN][head], "corrupted": mean_of(args.corruptions)}
    metrics.update({f"corruption/{name}": mean_of([name]) for name in args.corruptions})
    metrics.update({f"family/{family}": mean_of(members) for family, members in families.items()})
    for name in args.corruptions:
        metrics.update({f"severity/{name}/{s}": per_level[f"{name}/{s}"][head] for s in args.severities})
    for s in args.severities:  # how a gain fades with severity: over every corruption, then per family
        metrics[f"at_severity/{s}"] = mean_of(args.corruptions, [s])
        metrics.update({f"at_severity/{s}/{family}": mean_of(members, [s]) for family, members in families.items()})
    return metrics


def summarize(scores, args):
    """Per row and head: the metrics per seed, their intervals, the paired differences to the baseline's logits
    (`paired`) and, for a branch, to the row's own logits (`paired_to_logits`: what the branch gains or loses
    against the prediction the model returns)."""
    baseline = next(iter(args.rows))
    base = {seed: seed_summary(levels_, "logits", args) for seed, levels_ in scores[baseline].items()}
    summary = {}
    for row, seeds in scores.items():
        heads = [head for head in next(iter(seeds.values()))[CLEAN]]
        per_head = {
            head: {seed: seed_summary(levels_, head, args) for seed, levels_ in seeds.items()} for head in heads
        }
        summary[row] = {}
        for head, per_seed in per_head.items():
            keys = next(iter(per_seed.values()))
            entry = {
                "per_seed": per_seed,
                "mean": {key: interval([m[key] for m in per_seed.values()]) for key in keys},
            }
            if row != baseline:
                entry["paired"] = _paired(per_seed, base, keys)
                std = entry["paired"]["corrupted"]["std"]
                entry["seeds_for_target"] = None if std is None else seeds_for_half_width(std, args.target_half_width)
            if head != "logits":
                entry["paired_to_logits"] = _paired(per_seed, per_head["logits"], keys)
            summary[row][head] = entry
    return summary


def _paired(per_seed, reference, keys):
    """{metric: 95 % interval of the per-seed differences per_seed - reference}."""
    return {
        key: interval(
            paired_differences({s: m[key] for s, m in per_seed.items()}, {s: m[key] for s, m in reference.items()})
        )
        for key in keys
    }


def stability(summary, baseline):
    """Per row and family: seed std of the row's top-1 against the baseline's (the target: at most +1 point)."""
    table = {}
    base = summary[baseline]["logits"]["mean"]
    for row, heads in summary.items():
        if row == baseline:
            continue
        means = heads["logits"]["mean"]
        table[row] = {
            key: {
                "std": means[key]["std"],
                "baseline_std": base[key]["std"],
                "within_one_point": (
                    None if means[key]["std"] is None else means[key]["std"] <= base[key]["std"] + 1.0
                ),
            }
            for key in means
            if key.startswith("family/") or key in (CLEAN, "corrupted")
        }
    return table


def plot(results, args, path):
    rows = list(results["summary"])
    columns = 4
    panels = len(args.corruptions) + 1
    figure, axes = pyplot().subplots(
        (panels + columns - 1) // columns, columns, figsize=(4 * columns, 3.2 * ((panels + columns - 1) // columns))
    )
    axes = axes.ravel()
    for axis, name in zip(axes, args.corruptions):
        for row in rows:
            means = results["summary"][row]["logits"]["mean"]
            values = [means[CLEAN]] + [means[f"severity/{name}/{s}"] for s in args.severities]
            axis.errorbar(
                [0, *args.severities],
                [v["mean"] for v in values],
                yerr=[v["std"] or 0 for v in values],
                label=row,
                capsize=2,
                marker="o",
                markersize=3,
            )
        axis.set_title(name)
        axis.set_xlabel("severity (0: clean)")
        axis.set_ylabel("top-1 (%)")
    axis = axes[len(args.corruptions)]
    others = [row for row in rows if "paired" in results["summary"][row]["logits"]]
    for position, row in enumerate(others):
        paired = results["summary"][row]["logits"]["paired"]
        for offset, key in enumerate((CLEAN, "corrupted")):
            value = paired[key]
            axis.errorbar(
                position + 0.15 * (2 * offset - 1),
                value["mean"],
                yerr=value["half_width"] or 0,
                fmt="os"[offset],
                color=f"C{offset}",
                capsize=3,
                label=key if position == 0 else None,
            )
    axis.axhline(0, color="grey", linewidth=0.8)
    axis.set_xticks(range(len(others)), others, rotation=30, ha="right", fontsize=7)
    axis.set_title(f"paired difference to {rows[0]} (95 % interval)")
    axis.set_ylabel("points")
    if others:  # a baseline alone has no paired difference to label
        axis.legend(fontsize=7)
    for axis in axes[panels:]:
        axis.set_visible(False)
    axes[0].legend(fontsize=6)
    figure.tight_layout()
    save_figure(figure, path, dpi=110)


def report(results):
    """The paired table as text (row, clean and corrupted top-1 and their paired differences with 95 % intervals),
    then per row and head (the model's logits and, for MARNet, each branch) the seed-to-seed std of top-1: clean,
    over all corruptions, per family."""
    lines = [
        f"{'row':32} {'clean':>16} {'corrupted':>16} {'paired clean':>18} {'paired corrupted':>18} seeds-for-target"
    ]
    for row, heads in results["summary"].items():
        entry = heads["logits"]
        paired = entry.get("paired", {})
        lines.append(
            f"{row:32} {format_interval(entry['mean'][CLEAN]):>16} {format_interval(entry['mean']['corrupted']):>16} "
            f"{format_interval(paired[CLEAN], signed=True) if paired else '':>18} "
            f"{format_interval(paired['corrupted'], signed=True) if paired else '':>18} "
            f"{entry.get('seeds_for_target', '')}"
        )
    means = next(iter(results["summary"].values()))["logits"]["mean"]
    families = [f"family/{family}" for family in FAMILIES if f"family/{family}" in means]
    lines += [
        "",
        f"{'seed std of top-1 (points)':48} {'clean':>7} {'corrupted':>9} "
        + " ".join(f"{key.split('/')[1]:>9}" for key in families),
    ]
    for row, heads in results["summary"].items():
        for head, entry in heads.items():
            stds = [entry["mean"][key]["std"] for key in (CLEAN, "corrupted", *families)]
            lines.append(
                f"{row + ' ' + head:48} "
                + " ".join(f"{'-' if std is None else f'{std:.2f}':>{9 if i else 7}}" for i, std in enumerate(stds))
            )
    return "\n".join(lines)


def markdown(results):
    """The tables BENCHMARKS.md copies, in Markdown: (1) per row, clean and mean corrupted top-1 and the paired
    differences to the baseline with 95 % intervals; (2) the paired difference per corruption family, then per
    severity (mean over the corruptions); (3) per row
    and head, the seed std per family and each branch's paired difference to the model's logits."""
    summary = results["summary"]
    families = [key for key in next(iter(summary.values()))["logits"]["mean"] if key.startswith("family/")]
    names = [key.split("/")[1] for key in families]
    seeds = next(iter(summary.values()))["logits"]["mean"][CLEAN]["n"]
    lines = [
        f"| row | clean top-1 (%) | corrupted top-1 (%) | paired clean (points) | paired corrupted (points) "
        f"| seeds for ±{results['target_half_width']:g} |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row, heads in summary.items():
        entry, paired = heads["logits"], heads["logits"].get("paired")
        differences = (
            [format_interval(paired[key], signed=True) for key in (CLEAN, "corrupted")] if paired else ["", ""]
        )
        lines.append(
            f"| {row} | {format_interval(entry['mean'][CLEAN])} | {format_interval(entry['mean']['corrupted'])} "
            f"| {differences[0]} | {differences[1]} | {entry.get('seeds_for_target') or ''} |"
        )
    lines += ["", f"| row (paired difference, points, {seeds} seeds) | " + " | ".join(names) + " |"]
    lines.append("| --- |" + " --- |" * len(names))
    for row, heads in summary.items():
        if paired := heads["logits"].get("paired"):
            lines.append(
                f"| {row} | " + " | ".join(format_interval(paired[key], signed=True) for key in families) + " |"
            )
    severities = [
        key for key in next(iter(summary.values()))["logits"]["mean"] if re.fullmatch(r"at_severity/\d+", key)
    ]
    titles = [f"severity {key.split('/')[1]}" for key in severities]
    lines += ["", "| row (paired difference, points, mean over the corruptions) | " + " | ".join(titles) + " |"]
    lines.append("| --- |" + " --- |" * len(severities))
    for row, heads in summary.items():
        if paired := heads["logits"].get("paired"):
            lines.append(
                f"| {row} | " + " | ".join(format_interval(paired[key], signed=True) for key in severities) + " |"
            )
    keys = [CLEAN, "corrupted", *families]
    header = [f"seed std {key.split('/')[-1]}" for key in keys] + [
        "branch - logits, corrupted",
        "branch - logits, noise",
    ]
    lines += ["", "| row, head | " + " | ".join(header) + " |", "| --- |" + " --- |" * len(header)]
    for row, heads in summary.items():
        for head, entry in heads.items():
            cells = ["" if entry["mean"][key]["std"] is None else f"{entry['mean'][key]['std']:.2f}" for key in keys]
            gains = entry.get("paired_to_logits", {})
            cells += [
                format_interval(gains[key], signed=True) if key in gains else ""
                for key in ("corrupted", "family/noise")
            ]
            lines.append(f"| {row}, {head} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    baseline = next(iter(args.rows))
    started = time.perf_counter()
    scores, count = score(args)
    summary = summarize(scores, args)
    results = {
        "date": date.today().isoformat(),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__},
        "dataset": str(args.dataset),
        "split": args.split,
        "num_images": count,
        "every": args.every,
        "baseline": baseline,
        "rows": {row: {str(seed): str(folder) for seed, folder in seeds.items()} for row, seeds in args.rows.items()},
        "variants": args.variants,
        "corruptions": {
            name: {
                "family": CORRUPTIONS[name].family,
                "parameter": CORRUPTIONS[name].parameter,
                "values": list(CORRUPTIONS[name].parameters),
            }
            for name in args.corruptions
        },
        "severities": args.severities,
        "target_half_width": args.target_half_width,
        "top1": scores,
        "summary": summary,
        "stability": stability(summary, baseline),
        "seconds": time.perf_counter() - started,
    }
    atomic_write_json(args.output, results)
    plot(results, args, args.output.with_suffix(".png"))
    print(report(results))
    print(markdown(results))
    print(f"wrote {args.output} and {args.output.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
