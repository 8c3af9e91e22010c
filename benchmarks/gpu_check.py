"""What MARNet costs on one GPU, side by side with its backbone, in one run of a few minutes:

1. training: bf16 (autocast) images/s and seconds per optimizer step of MARNet (default heads, cached 384-d text
   features) and of the bare ViT classifier on the same tower, calls interleaved, medians; their step-time ratio;
2. MFU: each model's training FLOPs per step (counted by `torch.utils.flop_counter` on one step) over the step
   time and the GPU's dense bf16 peak;
3. inference: images/s of both, bf16, evaluation mode, the same batch;
4. `torch.compile`: MARNet's training step compiled against eager, and the compile time;
5. data path: `--gpu_decode` (nvJPEG on the GPU) against decoding on the CPU, JPEG photos of 512x384 to 224 px
   (`benchmarks/data_loader.py`'s check: images/s of each and the largest pixel difference in 8-bit levels).

Pieces come from the other benchmarks: the optimizer step of `train_step.py`, the interleaved medians of `speed.py`,
the photos and the decode check of `data_loader.py`. Random weights and inputs: the cost does not depend on them.

    python benchmarks/gpu_check.py                     # ViT-B/16 at 224 px, the largest power-of-two batch that fits
    python benchmarks/gpu_check.py --batch-size 512    # a set batch
    python benchmarks/gpu_check.py --tiny              # a tiny ViT on the CPU in seconds (what the test suite runs)
"""

import argparse
import gc
import platform
import shutil
import tempfile
import time
from collections import Counter
from datetime import date
from pathlib import Path

import torch
from torch._dynamo.utils import counters
from torch.utils.flop_counter import FlopCounterMode
from transformers import ViTConfig, ViTForImageClassification

from data_loader import SIZES, gpu_decode_check, photo_dataset
from marnet_cli.files import atomic_write_json
from modeling_marnet import MARNetConfig, MARNetForImageClassification
from speed import interleaved_medians
from train_step import PRESETS, time_steps

RESULTS = Path(__file__).parent / "results"
TINY_TOWER = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32, patch_size=16
)
# With the tiny tower, MARNet heads to match (fewer reverse steps keep its torch.compile to seconds on a CPU).
TINY_HEADS = dict(projection_dim=16, denoiser_hidden_size=32, timestep_embedding_dim=16, num_inference_steps=2)
TEXT_HIDDEN_SIZE = 384  # all-MiniLM-L6-v2's width, the demo's text features
# Dense bf16 peak of each GPU, TFLOP/s, by the first name that its `torch.cuda.get_device_name()` contains.
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4, "A100": 312.0}
MODELS = ("backbone", "marnet")
# The batch search keeps a step's peak memory below this share of the GPU's: the rest is room for the compiled
# step's buffers and the allocator's fragmentation.
MEMORY_FRACTION = 0.8


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="A tiny ViT at 32 px and small counts, for the CPU.")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, help="Default: the largest power of two that trains (CUDA).")
    parser.add_argument("--max-batch-size", type=int, default=2048, help="Where the search for a batch stops.")
    parser.add_argument("--num-labels", type=int, default=172, help="Vireo-Food172's classes.")
    parser.add_argument("--steps", type=int, default=5, help="Timed optimizer steps per call.")
    parser.add_argument("--repeats", type=int, default=5, help="Interleaved calls per model.")
    parser.add_argument("--compile-backend", help="torch.compile backend (default: inductor; eager with --tiny).")
    parser.add_argument("--decode-images", type=int, default=512, help="512x384 JPEGs of the data-path check.")
    parser.add_argument("--peak-tflops", type=float, help="Dense bf16 peak for the MFU; default: by GPU name.")
    parser.add_argument("--output", type=Path, default=RESULTS / "gpu_check.json")
    args = parser.parse_args(argv)
    if args.tiny:
        args.batch_size = args.batch_size or 2
        args.steps, args.repeats, args.decode_images = 1, 1, 2
        # Dynamo still traces the whole step; inductor would spend minutes generating CPU code.
        args.compile_backend = args.compile_backend or "eager"
    elif args.batch_size is None and not args.device.startswith("cuda"):
        parser.error("--batch-size is needed off CUDA (the search for the largest batch is for GPUs).")
    args.compile_backend = args.compile_backend or "inductor"
    return args


def build_models(tower, num_labels, device, **marnet_fields):
    """{"backbone": ViTForImageClassification, "marnet": MARNet, default heads unless `marnet_fields` say otherwise}
    on one ViT config, in training mode."""
    tower = {**tower, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    backbone = ViTForImageClassification(ViTConfig(**tower, num_labels=num_labels))
    marnet = MARNetForImageClassification(
        MARNetConfig(
            vision_config=ViTConfig(**tower), text_hidden_size=TEXT_HIDDEN_SIZE, num_labels=num_labels, **marnet_fields
        )
    )
    return {"backbone": backbone.to(device).train(), "marnet": marnet.to(device).train()}


def batch_inputs(image_size, batch_size, num_labels, device):
    """{model name: forward kwargs of one training step}; MARNet also gets the cached text features (B, 384)."""
    pixel_values = torch.randn(batch_size, 3, image_size, image_size, device=device)
    labels = torch.randint(0, num_labels, (batch_size,), device=device)
    text_embeds = torch.randn(batch_size, TEXT_HIDDEN_SIZE, device=device)
    return {
        "backbone": {"pixel_values": pixel_values, "labels": labels},
        "marnet": {"pixel_values": pixel_values, "labels": labels, "text_embeds": text_embeds},
    }


def largest_fitting_batch(model, optimizer, image_size, num_labels, max_batch_size, device):
    """The largest power of two <= `max_batch_size` for which one bf16 training step of `model` runs, and on CUDA
    peaks below `MEMORY_FRACTION` of the GPU's memory."""
    fitting, batch_size = None, 8
    while batch_size <= max_batch_size:
        try:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            inputs = batch_inputs(image_size, batch_size, num_labels, device)["marnet"]
            time_steps(model, optimizer, lambda inputs=inputs: inputs, 1, device, bf16=True)
            if device.type == "cuda" and torch.cuda.max_memory_allocated(device) > MEMORY_FRACTION * (
                torch.cuda.get_device_properties(device).total_memory
            ):
                break
        except torch.OutOfMemoryError:
            break
        finally:
            inputs = None
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":  # hand back what a failed step left allocated
                gc.collect()
                torch.cuda.empty_cache()
        fitting, batch_size = batch_size, batch_size * 2
    if fitting is None:
        raise SystemExit("Not even a batch of 8 trains on this GPU: pass a smaller --batch-size.")
    return fitting


def training_flops(model, inputs, device):
    """FLOPs of one bf16 forward and backward of `model` on `inputs` (matmuls, convolutions, attention kernels)."""
    with FlopCounterMode(display=False) as counter:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(**inputs).loss
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def training_step_times(models, optimizers, inputs, args, device):
    """{name: median seconds per bf16 optimizer step}, the models' calls of `--steps` steps interleaved."""
    calls = {
        name: lambda name=name: time_steps(
            models[name], optimizers[name], lambda: inputs[name], args.steps, device, bf16=True
        )
        for name in models
    }
    medians = interleaved_medians(calls, args.repeats, str(device))
    return {name: seconds / args.steps for name, seconds in medians.items()}


def inference_seconds(models, pixel_values, repeats, device):
    """{name: median seconds of one bf16 evaluation-mode forward of the batch}, interleaved."""
    for model in models.values():
        model.eval()
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
        medians = interleaved_medians(
            {name: lambda model=model: model(pixel_values=pixel_values) for name, model in models.items()},
            repeats,
            str(device),
        )
    for model in models.values():
        model.train()
    return medians


def compile_speedup(model, optimizer, inputs, args, device):
    """MARNet's training step eager against `torch.compile`d: seconds per step of each, the speedup, the compile time,
    and the graph breaks (each one splits the compiled graph and may sync with the host)."""
    breaks_before = Counter(counters["graph_break"])
    compiled = torch.compile(model, backend=args.compile_backend)
    started = time.perf_counter()
    time_steps(compiled, optimizer, lambda: inputs, 1, device, bf16=True)  # compiles forward and backward
    compile_seconds = time.perf_counter() - started
    breaks = Counter(counters["graph_break"]) - breaks_before  # {reason: count}
    step_times = training_step_times(
        {"eager": model, "compiled": compiled},
        {"eager": optimizer, "compiled": optimizer},
        {"eager": inputs, "compiled": inputs},
        args,
        device,
    )
    return {
        "backend": args.compile_backend,
        "eager_seconds_per_step": step_times["eager"],
        "compiled_seconds_per_step": step_times["compiled"],
        "speedup": step_times["eager"] / step_times["compiled"],
        "compile_seconds": compile_seconds,
        "graph_breaks": {reason.splitlines()[0]: count for reason, count in breaks.items()},
    }


def decode_path(args, image_size, device):
    """`data_loader.gpu_decode_check` on `--decode-images` photos of 512x384."""
    work = Path(tempfile.mkdtemp(prefix="marnet-gpu-check-"))
    try:
        data = {"512x384": photo_dataset(work / "512x384", *SIZES["512x384"], args.decode_images)}
        return gpu_decode_check(data, image_size, min(args.batch_size, 64), str(device))["512x384"]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def peak_tflops(args, device):
    if args.peak_tflops is not None or device.type != "cuda":
        return args.peak_tflops
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


def print_report(report):
    training, inference = report["training"], report["inference"]
    memory = report["cuda_memory"]
    filled = "" if memory is None else f" ({memory['training_peak_gib']:.1f} of {memory['total_gib']:.1f} GiB)"
    print(f"{report['device']}: {report['tower']}, batch {report['batch_size']}{filled}, bf16 autocast")
    print(f"{'':<28}{'backbone':>12}{'MARNet':>12}{'MARNet/backbone':>18}")
    rows = [
        ("train s/step", training["seconds_per_step"], "{:.4f}", training["step_time_ratio"]),
        ("train images/s", training["images_per_second"], "{:.1f}", None),
        ("train TFLOP/step", training["tflop_per_step"], "{:.4g}", None),
        ("MFU", training["mfu"], "{:.1%}", None),
        ("inference images/s", inference["images_per_second"], "{:.1f}", inference["time_ratio"]),
    ]
    for label, values, number, ratio in rows:
        cells = ["n/a" if values[name] is None else number.format(values[name]) for name in MODELS]
        print(f"{label:<28}{cells[0]:>12}{cells[1]:>12}{'' if ratio is None else f'{ratio:.3f}x':>18}")
    compiled = report["torch_compile"]
    print(
        f"torch.compile ({compiled['backend']}), MARNet training: {compiled['eager_seconds_per_step']:.4f} s/step "
        f"eager, {compiled['compiled_seconds_per_step']:.4f} compiled, speedup {compiled['speedup']:.3f}x "
        f"(compiling took {compiled['compile_seconds']:.0f} s)"
    )
    for reason, count in compiled["graph_breaks"].items():
        print(f"  graph break x{count}: {reason}")
    decode = report["data_path"]
    rates = decode["images_per_second"]
    print(
        f"data path, 512x384 JPEG -> {report['image_size']} px: CPU decoding {rates['cpu']:.1f} images/s, "
        f"--gpu_decode {rates['gpu_decode']:.1f} images/s, largest pixel difference {decode['max_levels']:.1f} "
        "8-bit levels"
    )
    print(f"total {report['wall_seconds']:.0f} s")


def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    device = torch.device(args.device)
    torch.manual_seed(0)
    tower = TINY_TOWER if args.tiny else PRESETS["vit-b16"]
    image_size = tower["image_size"]
    models = build_models(tower, args.num_labels, device, **(TINY_HEADS if args.tiny else {}))
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-5) for name, model in models.items()}
    if args.batch_size is None:
        args.batch_size = largest_fitting_batch(
            models["marnet"], optimizers["marnet"], image_size, args.num_labels, args.max_batch_size, device
        )
    inputs = batch_inputs(image_size, args.batch_size, args.num_labels, device)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step_seconds = training_step_times(models, optimizers, inputs, args, device)
    cuda_memory = (
        {
            "training_peak_gib": torch.cuda.max_memory_allocated(device) / 2**30,
            "total_gib": torch.cuda.get_device_properties(device).total_memory / 2**30,
        }
        if device.type == "cuda"
        else None
    )
    flops = {name: training_flops(models[name], inputs[name], device) for name in MODELS}
    peak = peak_tflops(args, device)
    inference = inference_seconds(models, inputs["backbone"]["pixel_values"], args.repeats, device)
    compiled = compile_speedup(models["marnet"], optimizers["marnet"], inputs["marnet"], args, device)
    report = {
        "date": date.today().isoformat(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.machine()})",
        "torch": torch.__version__,
        "tower": "tiny ViT, 32 px" if args.tiny else "ViT-B/16, 224 px",
        "image_size": image_size,
        "batch_size": args.batch_size,
        "steps_per_call": args.steps,
        "repeats": args.repeats,
        "peak_bf16_tflops": peak,
        "cuda_memory": cuda_memory,
        "training": {
            "seconds_per_step": step_seconds,
            "images_per_second": {name: args.batch_size / seconds for name, seconds in step_seconds.items()},
            "step_time_ratio": step_seconds["marnet"] / step_seconds["backbone"],
            "tflop_per_step": {name: count / 1e12 for name, count in flops.items()},
            "mfu": {
                name: None if peak is None else flops[name] / step_seconds[name] / (peak * 1e12) for name in MODELS
            },
        },
        "inference": {
            "images_per_second": {name: args.batch_size / seconds for name, seconds in inference.items()},
            "time_ratio": inference["marnet"] / inference["backbone"],
        },
        "torch_compile": compiled,
        "data_path": decode_path(args, image_size, device),
    }
    report["wall_seconds"] = time.perf_counter() - started
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.output, report)
    print_report(report)
    print(f"wrote {args.output}")
    return report


if __name__ == "__main__":
    main()
