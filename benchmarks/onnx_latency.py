"""Latency of MARNet's exported ONNX graph in ONNX Runtime against the same model in PyTorch, side by side.

The model is section 2's: the pretrained EfficientNet-Lite0 tower (converted by `marnet-convert-efficientnet`) under
default MARNet heads (MiniLM width 384, the default reverse steps), random heads; exported by `marnet-export`'s code.
Both run on the same preprocessed batch, on the CPU, with the same number of threads; the calls are interleaved
(PyTorch, ONNX Runtime, PyTorch, ...) and reported as medians of `--repeats`, batch 1 and `--batch-size`.

    python benchmarks/onnx_latency.py        # writes benchmarks/results/onnx_latency.json
"""

import argparse
import platform
import sys
import tempfile
from datetime import date
from pathlib import Path

import onnxruntime
import torch
from transformers import AutoImageProcessor

from hub_scripts.convert_efficientnet_lite0 import convert as convert_efficientnet_lite0
from marnet_cli.files import atomic_write_json
from marnet_cli.train_args import parse_marnet_config
from modeling_marnet.export_onnx import ONNX_NAME, export_onnx, sample_pixel_values
from modeling_marnet.training.image_processing import standard_image_processor
from speed import add_model_options, build_marnet, interleaved_medians

RESULTS = Path(__file__).parent / "results"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(parser)
    parser.add_argument("--output", type=Path, default=RESULTS / "onnx_latency.json")
    return parser.parse_args()


def latency_rows(model, session, processor, batch_sizes, repeats):
    """{batch, pytorch_ms, onnxruntime_ms, onnxruntime_over_pytorch} per batch size, medians of interleaved calls."""
    rows = []
    for batch_size in batch_sizes:
        pixel_values = sample_pixel_values(processor, batch_size, seed=batch_size)  # (B, 3, H, W)
        feeds = {"pixel_values": pixel_values.numpy()}
        with torch.inference_mode():
            medians = interleaved_medians(
                {
                    "pytorch": lambda pixel_values=pixel_values: model(pixel_values=pixel_values),
                    "onnxruntime": lambda feeds=feeds: session.run(["logits"], feeds),
                },
                repeats,
                "cpu",
            )
        rows.append(
            {
                "batch_size": batch_size,
                "pytorch_ms": 1e3 * medians["pytorch"],
                "onnxruntime_ms": 1e3 * medians["onnxruntime"],
                "onnxruntime_over_pytorch": medians["onnxruntime"] / medians["pytorch"],
            }
        )
    return rows


def main():
    args = parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        tower = args.tower
        if tower is None:
            tower = Path(scratch) / "efficientnet-lite0"
            convert_efficientnet_lite0(tower)
        processor = standard_image_processor(AutoImageProcessor.from_pretrained(tower))  # as marnet-train saves it
        model = build_marnet(args, tower)
        exported = Path(scratch) / "onnx"
        difference = export_onnx(model, processor, exported)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = onnxruntime.InferenceSession(str(exported / ONNX_NAME), options, providers=["CPUExecutionProvider"])
        rows = latency_rows(model, session, processor, (1, args.batch_size), args.repeats)

    report = {
        "date": date.today().isoformat(),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "threads": torch.get_num_threads(),
        },
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
        "model": "MARNet on EfficientNet-Lite0, 224 px, float32",
        "marnet_config": parse_marnet_config(args.marnet_config),
        "default_reverse_steps": model.config.num_inference_steps,
        "export_check_max_abs_difference": difference,
        "repeats": args.repeats,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "latency": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.output, report)
    for row in rows:
        print(
            f"batch {row['batch_size']:>3}: PyTorch {row['pytorch_ms']:.1f} ms, ONNX Runtime "
            f"{row['onnxruntime_ms']:.1f} ms, ratio {row['onnxruntime_over_pytorch']:.3f}"
        )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
