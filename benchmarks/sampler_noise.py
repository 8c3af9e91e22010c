"""How much MARNet's accuracy depends on the noise its reverse diffusion starts from.

At inference CDR samples `x_CDR` from a fixed Gaussian draw seeded by `config.sampler_seed`. This evaluates trained
MARNet folders on one split under several sampler seeds, and with the logits averaged over those draws, so the seed
that a published model happens to carry can be told apart from what the model learned. Validation split by default:
this is a diagnostic, not a place to choose anything on test.

    python benchmarks/sampler_noise.py runs/accuracy/runs/original-train0.25/marnet/*/seed-* \\
        --dataset runs/accuracy/data/openclipart-default-rgb-white-48px --output noise.json
"""

import argparse
import statistics
import sys
from pathlib import Path

import torch

from marnet_cli.files import atomic_write_json


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="MARNet model folders (run output directories)")
    parser.add_argument("--dataset", type=Path, required=True, help="`save_to_disk` DatasetDict with image/label")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--sampler-seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--output", type=Path, help="write the results here as JSON")
    return parser.parse_args(argv)


@torch.no_grad()
def split_logits(model, pixel_values, batch_size):
    """(N, L) logits of `model` on preprocessed `pixel_values` (N, C, H, W), `batch_size` images at a time."""
    model.eval()
    chunks = [
        model(pixel_values=pixel_values[i : i + batch_size]).logits for i in range(0, len(pixel_values), batch_size)
    ]
    return torch.cat(chunks)


def logits_per_seed(model, pixel_values, seeds, batch_size):
    """{seed: (N, L) logits} of `model` on preprocessed `pixel_values` (N, C, H, W) under each sampler seed."""
    results = {}
    for seed in seeds:
        model.config.sampler_seed = seed
        results[seed] = split_logits(model, pixel_values, batch_size)
    return results


def top1(logits, labels):
    return float((logits.argmax(-1) == labels).float().mean())


def load_diffusion_run(folder, split, question):
    """(model, pixel_values (N, C, H, W), labels (N,)) of the MARNet run `folder` on the `datasets` split `split`,
    preprocessed by the run's own image processor; exits with a message if the model has no diffusion CDR branch
    (then `question`, e.g. "the sampler seed", does not matter)."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    import modeling_marnet  # noqa: F401  (registers MARNet with the Auto classes)

    model = AutoModelForImageClassification.from_pretrained(folder)
    if getattr(model.config, "reconstruction", "none") != "diffusion":
        raise SystemExit(f"{folder}: not a MARNet with a diffusion CDR branch; {question} does not matter there.")
    processor = AutoImageProcessor.from_pretrained(folder)
    pixel_values = processor(images=[image.convert("RGB") for image in split["image"]], return_tensors="pt")[
        "pixel_values"
    ]
    return model, pixel_values, torch.tensor(split["label"])


def evaluate_run(folder, split, seeds, batch_size):
    model, pixel_values, labels = load_diffusion_run(folder, split, "the sampler seed")
    per_seed = logits_per_seed(model, pixel_values, seeds, batch_size)
    accuracies = [top1(logits, labels) for logits in per_seed.values()]
    averaged = top1(torch.stack([logits.softmax(-1) for logits in per_seed.values()]).mean(0), labels)
    predictions = torch.stack([logits.argmax(-1) for logits in per_seed.values()])  # (S, N)
    agreement = float((predictions == predictions[0]).all(0).float().mean())
    return {
        "run": str(folder),
        "top1_per_seed": dict(zip(map(str, seeds), accuracies)),
        "top1_mean": statistics.fmean(accuracies),
        "top1_std": statistics.stdev(accuracies) if len(seeds) > 1 else 0.0,
        "top1_averaged_draws": averaged,
        "predictions_identical_across_seeds": agreement,
    }


def main(argv=None):
    import datasets

    args = parse_args(argv)
    split = datasets.load_from_disk(str(args.dataset))[args.split]
    results = [evaluate_run(folder, split, args.sampler_seeds, args.batch_size) for folder in args.runs]
    print("| run | top-1 per sampler seed (%) | mean ± std | averaged draws | same prediction under every seed |")
    print("| --- | --- | --- | --- | --- |")
    for result in results:
        per_seed = " ".join(f"{100 * value:.2f}" for value in result["top1_per_seed"].values())
        mean, std = 100 * result["top1_mean"], 100 * result["top1_std"]
        identical = 100 * result["predictions_identical_across_seeds"]
        print(
            f"| {result['run']} | {per_seed} | {mean:.2f} ± {std:.2f} | {100 * result['top1_averaged_draws']:.2f} "
            f"| {identical:.1f} % |"
        )
    if args.output:
        atomic_write_json(args.output, {"split": args.split, "sampler_seeds": args.sampler_seeds, "runs": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
