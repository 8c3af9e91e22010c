"""Accuracy against the number of reverse-diffusion steps MARNet samples `x_CDR` with at inference.

`speed.py` measures the latency side of this trade (forward time per number of steps); this script measures the
accuracy side. Trained MARNet run folders are scored on one split (validation by default: a default is chosen there,
never on test) with `config.num_inference_steps` set to each of `--steps`, on the same images and with the run's own
sampler seed. Each step count is compared with the count the run was saved with, paired over runs (one run per training
seed): the mean difference in top-1 with its 95 % interval (Student's t over runs).

    python benchmarks/reverse_steps.py runs/accuracy/runs/original/marnet/lr0.001-x1/seed-* \\
        --dataset runs/accuracy/data/DATASET --steps 1 2 5 10 20 --output reverse_steps.json
"""

import argparse
import sys
from pathlib import Path

from marnet_cli.files import atomic_write_json
from paired_stats import format_interval, interval
from sampler_noise import load_diffusion_run, split_logits, top1


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="MARNet model folders (run output directories)")
    parser.add_argument("--dataset", type=Path, required=True, help="`save_to_disk` DatasetDict with image/label")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--steps", nargs="+", type=int, default=[1, 2, 5, 10, 20], help="reverse-step counts")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--output", type=Path, help="write the results here as JSON")
    args = parser.parse_args(argv)
    if bad := [steps for steps in args.steps if steps < 1]:
        parser.error(f"--steps: every count must be >= 1, got {bad}.")
    return args


def evaluate_run(folder, split, step_counts, batch_size):
    """{"run", "saved_steps", "top1": {steps: top-1}} of one run folder at each reverse-step count."""
    model, pixel_values, labels = load_diffusion_run(folder, split, "the number of reverse steps")
    saved_steps = model.config.num_inference_steps
    accuracies = {}
    for steps in sorted(set(step_counts) | {saved_steps}):
        model.config.num_inference_steps = steps
        accuracies[steps] = top1(split_logits(model, pixel_values, batch_size), labels)
    return {"run": str(folder), "saved_steps": saved_steps, "top1": accuracies}


def summarize(runs, step_counts):
    """Per step count: the top-1 over runs and its paired difference from each run's saved count (in points)."""
    return [
        {
            "steps": steps,
            "top1": interval([100 * run["top1"][steps] for run in runs]),
            "difference_from_saved": interval(
                [100 * (run["top1"][steps] - run["top1"][run["saved_steps"]]) for run in runs]
            ),
        }
        for steps in sorted(step_counts)
    ]


def markdown(summary, split, runs):
    saved = sorted({run["saved_steps"] for run in runs})
    lines = [
        f"{len(runs)} runs on the {split} split; saved with {', '.join(map(str, saved))} reverse steps",
        "",
        "| reverse steps | top-1 (%) | paired difference from the saved count (points, 95 %) |",
        "| --- | --- | --- |",
    ]
    for row in summary:
        lines.append(
            f"| {row['steps']} | {format_interval(row['top1'])} | "
            f"{format_interval(row['difference_from_saved'], signed=True)} |"
        )
    return "\n".join(lines)


def main(argv=None):
    import datasets

    args = parse_args(argv)
    split = datasets.load_from_disk(str(args.dataset))[args.split]
    runs = [evaluate_run(folder, split, args.steps, args.batch_size) for folder in args.runs]
    summary = summarize(runs, args.steps)
    print(markdown(summary, args.split, runs))
    if args.output:
        atomic_write_json(
            args.output,
            {"split": args.split, "images": len(split), "steps": sorted(args.steps), "runs": runs, "summary": summary},
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
