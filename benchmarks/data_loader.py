"""Throughput of the training data path: the PIL path against the uint8 path, side by side in one run.

Data: real-size JPEG photos made from scikit-image's sample photos (astronaut, coffee, chelsea, rocket, Hubble deep
field, immunohistochemistry, retina, cat), cropped to fill 512x384 and 1024x768 at shifting offsets and mirrored,
saved at quality 90 into a `save_to_disk` dataset, as `marnet-data` stores them.

Four measurements:

1. `per_core`: images per CPU-second of one process on one thread (CPU time, so that waiting for a core on a shared
   machine does not count) for the training path (`--augment` preset, default crop_flip; also randaugment) and the
   evaluation path, old and new, interleaved round by round; the best round of each (other jobs only ever slow a
   round down, as with `timeit`). `old` is the PIL path, copied below: `datasets` decodes to PIL, torchvision v2
   augments the PIL image, the image processor takes the batch of PIL images (decode, augment, resize and normalise
   all in the worker). `new` is `training.batches`: TorchCodec decode, v2 on uint8 tensors, the
   processor's resize per image, its normalisation per batch, measured twice: normalising on the same core (CPU
   training), and without the normalisation, which the training step does on the accelerator (what a DataLoader
   worker then delivers per core).
2. `parity`: the new evaluation pixel values against the processor's, in 8-bit levels (max over all pixels).
3. `end_to_end`: `python -m modeling_marnet.train` images/s (`train_images_per_second` of metrics.json) with a
   small ViT on these JPEGs (`--e2e-epochs`, so that start-up weighs little), the PIL path's code (a `git archive`
   of `--baseline-ref`, by default the commit before `training/image_decoding.py`) against the current code with its
   default workers and with `--dataloader_num_workers 0`, runs interleaved; medians.
4. `pipeline`: `pipeline("image-classification")` images/s on 512x384 JPEG files, a MARNet on the same tower saved
   with its processor, the processor loaded with `backend="pil"` and with `use_fast=True` (torchvision).
5. `gpu_decode_check` (CUDA, not in the default steps; also in `benchmarks/gpu_check.py`): `--gpu_decode`'s path
   against the CPU path, the evaluation pixel values' largest difference in 8-bit levels and the images/s of each.
6. `decode`: decoding alone, images per CPU-second of one thread, the photos as JPEG and re-encoded as PNG and WebP:
   `torchvision` (the decoding before the port to TorchCodec, copied below: torchvision's deprecated decoders for
   JPEG and PNG, PIL for WebP), `torchcodec` (`training.image_decoding.decode_rgb`) and `pil` (`datasets` and
   `convert("RGB")`, what the processor sees at inference), interleaved round by round, the best round of each, and
   the ratios torchcodec / torchvision and torchcodec / pil.

CPU (what this machine measures):
    python benchmarks/data_loader.py
GPU (see BENCHMARKS.md for the full commands): end to end with ViT-B/16 in bf16, with and without --gpu_decode:
    python benchmarks/data_loader.py --only end_to_end --tower vit-b16 --train-images 2048 --batch-size 64 \\
        --e2e-variants new new_gpu_decode -- --mixed_precision bf16
"""

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import skimage.data
import torch
from accelerate.utils import send_to_device
from torchvision.io import ImageReadMode, decode_jpeg, decode_png
from torchvision.transforms import v2
from transformers import AutoImageProcessor, ViTConfig, ViTImageProcessor, ViTModel, pipeline

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from figures import pyplot, save_figure  # noqa: E402
from marnet_cli.files import atomic_write_json  # noqa: E402
from marnet_cli.run_folder import RunFolder  # noqa: E402
from modeling_marnet import MARNetConfig, MARNetForImageClassification  # noqa: E402
from modeling_marnet.training.augmentation import POLICIES, RandomAugmentation  # noqa: E402
from modeling_marnet.training.batches import (  # noqa: E402
    ImagePreprocessing,
    ImageTextExamples,
    MARNetCollator,
    model_inputs,
)
from modeling_marnet.training.image_decoding import decode_rgb, decode_with_pil  # noqa: E402
from modeling_marnet.training.pixel_limit import JPEG_SIGNATURE, PNG_SIGNATURE, header_checked  # noqa: E402

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "cat")
SIZES = {"512x384": (512, 384), "1024x768": (1024, 768)}
TOWERS = {
    # A small ViT at 112 px: on CPU, data loading is a large share of a step.
    "small": dict(hidden_size=96, num_hidden_layers=2, num_attention_heads=3, intermediate_size=384, image_size=112),
    "vit-b16": dict(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, image_size=224
    ),
}
NEW_VARIANTS = {"new": "uint8 path", "new, normalised on the accelerator": "uint8 path, normalised elsewhere"}
E2E_VARIANTS = {
    "old": [],
    "new": [],
    "new_0_workers": ["--dataloader_num_workers", "0"],
    "new_1_worker": ["--dataloader_num_workers", "1"],
    "new_gpu_decode": ["--gpu_decode"],
}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64, help="Images per size for the per-core rows.")
    parser.add_argument("--rounds", type=int, default=7, help="Interleaved rounds of the per-core rows.")
    parser.add_argument("--image-size", type=int, default=224, help="Output size of the per-core rows.")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--presets", nargs="+", default=["crop_flip", "randaugment"], choices=tuple(POLICIES))
    parser.add_argument(
        "--only", nargs="+", choices=("per_core", "parity", "end_to_end", "pipeline", "gpu_decode_check", "decode")
    )
    parser.add_argument("--tower", choices=tuple(TOWERS), default="small", help="Tower of the end-to-end runs.")
    parser.add_argument("--train-images", type=int, default=384, help="512x384 JPEGs in the end-to-end runs.")
    parser.add_argument("--e2e-repeats", type=int, default=3)
    parser.add_argument("--e2e-epochs", type=int, default=3, help="Epochs of each end-to-end run (steady state).")
    parser.add_argument("--e2e-variants", nargs="+", default=["old", "new", "new_0_workers"], choices=E2E_VARIANTS)
    parser.add_argument(
        "--baseline-ref",
        help="Commit of the old code (default: the parent of the commit that "
        "added modeling_marnet/training/image_decoding.py).",
    )
    parser.add_argument("--work-dir", help="Where data and runs go (default: a temporary directory, removed).")
    parser.add_argument("--note", help="The conditions of the run (other load on the machine, ...), kept in the JSON.")
    parser.add_argument("--output", default=str(REPO_ROOT / "benchmarks" / "results" / "data_loader.json"))
    parser.add_argument("--plot", default=str(REPO_ROOT / "benchmarks" / "results" / "data_loader.png"))
    parser.add_argument("train_options", nargs="*", help="After `--`: extra marnet-train options (end to end).")
    return parser.parse_args()


def photos(width, height, count):
    """`count` JPEG photos of width x height: the sample photos scaled to cover it, cropped at shifting offsets,
    every other one mirrored."""
    sources = [PIL.Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in PHOTOS[:count]]
    encoded = []
    for index in range(count):
        source = sources[index % len(sources)]
        scale = max(width / source.width, height / source.height) * (1 + 0.1 * (index // len(sources) % 3))
        image = source.resize((round(source.width * scale), round(source.height * scale)), PIL.Image.BICUBIC)
        left = (image.width - width) * (index % 5) // 4
        top = (image.height - height) * (index % 3) // 2
        image = image.crop((left, top, left + width, top + height))
        if index % 2:
            image = image.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        encoded.append(buffer.getvalue())
    return encoded


def photo_dataset(directory, width, height, count, num_classes=4):
    """A `save_to_disk` dataset of the photos (loaded back memory-mapped, as training reads it)."""
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[f"dish_{i}" for i in range(num_classes)])}
    )
    images = [{"bytes": data, "path": None} for data in photos(width, height, count)]
    labels = [index % num_classes for index in range(count)]
    datasets.Dataset.from_dict({"image": images, "label": labels}, features=features).save_to_disk(str(directory))
    return datasets.load_from_disk(str(directory))


class OldAugmentation:
    """`training.augmentation.RandomAugmentation` of the PIL path: the same v2 transforms, on PIL images."""

    def __init__(self, image_size, preset, seed=0):
        steps = [v2.RandomResizedCrop(image_size, scale=(0.5, 1.0)), v2.RandomHorizontalFlip()]
        if POLICIES[preset] is not None:
            steps.append(POLICIES[preset]())
        self.transforms, self.seed, self.epoch = v2.Compose(steps), seed, 0

    def __call__(self, image, index):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hash((self.seed, self.epoch, index)) % 2**63)
            return self.transforms(image)


def old_batches(dataset, processor, augmentation, batch_size):
    """The PIL path: `ImageTextExamples` (PIL from `datasets`, augmented as PIL) and `MARNetCollator`
    with `ImageTransform` (the processor on the batch of PIL images), as a callable giving a generator of batches."""

    def batches():
        for start in range(0, len(dataset), batch_size):
            images = []
            for index in range(start, min(start + batch_size, len(dataset))):
                image = dataset[index]["image"]
                if augmentation is not None:
                    image = augmentation(image.convert("RGB"), index)
                images.append(image)
            yield processor(images=[image.convert("RGB") for image in images], return_tensors="pt")["pixel_values"]

    return batches


def new_batches(dataset, processor, augmentation, batch_size, normalise=True):
    """`training.batches`: built once (as a run builds them), then a generator of batches at each call."""
    preprocessing = ImagePreprocessing(processor, augmentation)
    examples = ImageTextExamples(dataset, "image", "label", preprocessing)
    collator, inputs = MARNetCollator(), model_inputs(processor, preprocessing)

    def batches():
        for start in range(0, len(examples), batch_size):
            batch = collator([examples[index] for index in range(start, min(start + batch_size, len(examples)))])
            yield inputs(batch)["pixel_values"] if normalise else batch["pixel_values"]

    return batches


def images_per_cpu_second(batches):
    """Images per second of this process's CPU time: on a shared machine, waiting for a core does not count."""
    started, count = time.process_time(), 0
    for pixel_values in batches:
        count += pixel_values.shape[0]
    return count / (time.process_time() - started)


def per_core(args, data):
    """{size: {row: median images/s}} of one thread, the rows interleaved round by round."""
    torch.set_num_threads(1)
    processor = ViTImageProcessor(size={"height": args.image_size, "width": args.image_size})  # ViT-B/16's
    size = (args.image_size, args.image_size)
    results = {}
    for size_name, dataset in data.items():
        rows = {
            "eval old": old_batches(dataset, processor, None, args.batch_size),
            "eval new": new_batches(dataset, processor, None, args.batch_size),
            "eval new, normalised on the accelerator": new_batches(dataset, processor, None, args.batch_size, False),
        }
        for preset in args.presets:
            augmentation = RandomAugmentation.from_options(size, preset, 0.0, seed=0)
            rows[f"train {preset} old"] = old_batches(
                dataset, processor, OldAugmentation(size, preset), args.batch_size
            )
            rows[f"train {preset} new"] = new_batches(dataset, processor, augmentation, args.batch_size)
            rows[f"train {preset} new, normalised on the accelerator"] = new_batches(
                dataset, processor, augmentation, args.batch_size, False
            )
        samples = {row: [] for row in rows}
        for _ in range(args.rounds):
            for row, batches in rows.items():
                samples[row].append(images_per_cpu_second(batches()))
        results[size_name] = {row: max(values) for row, values in samples.items()}
        print(size_name, {row: round(value, 1) for row, value in results[size_name].items()}, flush=True)
    return results


def parity(data, image_size):
    """Max |new - processor| of the evaluation pixel values, in 8-bit levels, for ViT's and a timm-style processor."""
    from transformers import BitImageProcessor

    processors = {
        "vit (bilinear resize)": ViTImageProcessor(size={"height": image_size, "width": image_size}),
        "bit / timm (bicubic, shortest edge, center crop)": BitImageProcessor(
            size={"shortest_edge": round(image_size / 0.875)}, crop_size={"height": image_size, "width": image_size}
        ),
    }
    results = {}
    for name, processor in processors.items():
        one_level = torch.tensor(processor.rescale_factor) / torch.tensor(processor.image_std)  # (3,)
        worst = 0.0
        for dataset in data.values():
            new = torch.cat(list(new_batches(dataset, processor, None, 32)()))
            old = torch.cat(list(old_batches(dataset, processor, None, 32)()))
            worst = max(worst, float(((new - old).abs().amax(dim=(0, 2, 3)) / one_level).max()))
        results[name] = worst
    print("parity (8-bit levels):", results, flush=True)
    return results


def gpu_decode_check(data, image_size, batch_size, device="cuda"):
    """`--gpu_decode` (the JPEGs decoded on `device`, CUDA for real; the CPU runs the same code in tests) against the
    CPU path, evaluation transform: the largest difference of the pixel values in 8-bit levels, and the images/s of
    each (the CPU path on this process's threads)."""
    processor = ViTImageProcessor(size={"height": image_size, "width": image_size})
    preprocessing, collator = ImagePreprocessing(processor), MARNetCollator()
    one_level = (torch.tensor(processor.rescale_factor) / torch.tensor(processor.image_std)).view(1, 3, 1, 1)
    paths = {
        "cpu": (model_inputs(processor, preprocessing), "cpu"),
        "gpu_decode": (model_inputs(processor, preprocessing, device), device),
    }
    results = {}
    for size_name, dataset in data.items():
        examples = {
            path: ImageTextExamples(dataset, "image", "label", preprocessing, defer_decoding=path == "gpu_decode")
            for path in paths
        }
        pixel_values, rates = {}, {}
        for path, (inputs, batch_device) in paths.items():
            started, batches = time.perf_counter(), []
            for start in range(0, len(dataset), batch_size):
                rows = range(start, min(start + batch_size, len(dataset)))
                batch = collator([examples[path][row] for row in rows])
                batches.append(inputs(send_to_device(batch, batch_device))["pixel_values"].cpu())
            if torch.device(batch_device).type == "cuda":
                torch.cuda.synchronize()
            rates[path] = len(dataset) / (time.perf_counter() - started)
            pixel_values[path] = torch.cat(batches)
        levels = float(((pixel_values["gpu_decode"] - pixel_values["cpu"]).abs() / one_level).max())
        results[size_name] = {"max_levels": levels, "images_per_second": rates}
    print("gpu decode:", results, flush=True)
    return results


TORCHVISION_DEPRECATION = "The image decoding and encoding capabilities of TorchVision are deprecated"


def torchvision_decode_rgb(data):
    """`training.image_decoding.decode_rgb` before the port to TorchCodec, for the images measured here (3-channel
    JPEGs, 8-bit RGB PNGs; WebP went to PIL): the same header check, then torchvision's deprecated decoders."""
    if header_checked(data) and data.startswith((JPEG_SIGNATURE, PNG_SIGNATURE)):
        encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        decode = decode_jpeg if data.startswith(JPEG_SIGNATURE) else decode_png
        mode = ImageReadMode.UNCHANGED if decode is decode_jpeg else ImageReadMode.RGB
        return decode(encoded, mode, apply_exif_orientation=True)
    return decode_with_pil({"bytes": data, "path": None})


DECODERS = {
    "torchvision": torchvision_decode_rgb,
    "torchcodec": lambda data: decode_rgb({"bytes": data, "path": None}),
    "pil": lambda data: decode_with_pil({"bytes": data, "path": None}),
}


def reencoded(jpegs):
    """{format: encoded photos}: the JPEGs, and the same photos (decoded by PIL) as PNG and as WebP (quality 90)."""
    images = [PIL.Image.open(io.BytesIO(data)) for data in jpegs]
    formats = {"png": dict(format="PNG"), "webp": dict(format="WEBP", quality=90)}
    encoded = {"jpeg": list(jpegs)}
    for name, options in formats.items():
        encoded[name] = []
        for image in images:
            buffer = io.BytesIO()
            image.save(buffer, **options)
            encoded[name].append(buffer.getvalue())
    return encoded


def decoded_per_cpu_second(decode, images):
    """Images decoded per second of this process's CPU time (torchvision's deprecation warning at each decode
    silenced: measuring it is the point)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", TORCHVISION_DEPRECATION, DeprecationWarning)
        started = time.process_time()
        for data in images:
            decode(data)
        return len(images) / (time.process_time() - started)


def decode_rates(count, rounds):
    """{size: {format: {decoder: best images/s}}} of one thread on `count` photos of each size, decoders interleaved
    round by round."""
    torch.set_num_threads(1)
    results = {}
    for size_name, size in SIZES.items():
        encoded = reencoded(photos(*size, count))
        samples = {image_format: {decoder: [] for decoder in DECODERS} for image_format in encoded}
        for _ in range(rounds):
            for image_format, images in encoded.items():
                for decoder, decode in DECODERS.items():
                    samples[image_format][decoder].append(decoded_per_cpu_second(decode, images))
        results[size_name] = {
            image_format: {decoder: max(values) for decoder, values in rates.items()}
            for image_format, rates in samples.items()
        }
        print(size_name, "decode images/s:", results[size_name], flush=True)
    return results


def decode_ratios(rates):
    """{size: {format: {"torchcodec / torchvision": ratio, "torchcodec / pil": ratio}}}."""
    return {
        size_name: {
            image_format: {f"torchcodec / {other}": row["torchcodec"] / row[other] for other in ("torchvision", "pil")}
            for image_format, row in formats.items()
        }
        for size_name, formats in rates.items()
    }


def baseline_ref():
    added = subprocess.run(
        ["git", "log", "--diff-filter=A", "--format=%H", "--", "modeling_marnet/training/image_decoding.py"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    if not added:
        raise SystemExit("No commit adds modeling_marnet/training/image_decoding.py here: pass --baseline-ref.")
    return f"{added[-1]}^"


def checkout(ref, directory):
    """The repository at `ref`, unpacked with `git archive` (no worktree bookkeeping)."""
    directory.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", ref], cwd=REPO_ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(directory)], input=archive, check=True)
    return directory


def save_tower(directory, tower):
    torch.manual_seed(0)
    fields = TOWERS[tower]
    ViTModel(ViTConfig(patch_size=16, **fields), add_pooling_layer=False).save_pretrained(directory)
    size = fields["image_size"]
    ViTImageProcessor(size={"height": size, "width": size}).save_pretrained(directory)
    return directory


def end_to_end(args, work):
    """{variant: [train images/s of each run]} of marnet-train, variants interleaved."""
    train = photo_dataset(work / "e2e-train", *SIZES["512x384"], args.train_images)
    dataset = work / "e2e"
    datasets.DatasetDict({"train": train, "validation": train.select(range(32))}).save_to_disk(str(dataset))
    tower = save_tower(work / "tower", args.tower)
    sources = {"old": checkout(args.baseline_ref or baseline_ref(), work / "old-code")}
    options = [
        "--dataset",
        dataset,
        "--vision_model",
        tower,
        "--ablation",
        "baseline",
        "--augment",
        "--num_train_epochs",
        args.e2e_epochs,
        "--per_device_train_batch_size",
        args.batch_size,
        "--eval_strategy",
        "no",
        "--checkpointing_steps",
        0,
        "--report_to",
        "none",
        "--logging_steps",
        1000,
        *args.train_options,
    ]
    results = {variant: [] for variant in args.e2e_variants}
    for repeat in range(args.e2e_repeats):
        for variant in args.e2e_variants:
            code = sources.get(variant, REPO_ROOT)
            output = work / "runs" / f"{variant}-{repeat}"
            command = [
                sys.executable,
                "-m",
                "modeling_marnet.train",
                *map(str, options),
                "--output_dir",
                str(output),
                *E2E_VARIANTS[variant],
            ]
            environment = {**os.environ, "PYTHONPATH": str(code), "HF_HUB_OFFLINE": "1"}
            finished = subprocess.run(command, cwd=code, env=environment, capture_output=True, text=True)
            if finished.returncode != 0:
                raise SystemExit(f"{variant} run failed:\n{finished.stderr[-3000:]}")
            metrics = RunFolder(output).read_metrics()
            results[variant].append(metrics["train_images_per_second"])
            print(variant, round(metrics["train_images_per_second"], 1), flush=True)
    return results


def saved_classifier(directory, tower):
    """A MARNet (visual-only row) on the `--tower` ViT, saved with its processor as training saves it."""
    torch.manual_seed(0)
    fields = TOWERS[tower]
    config = MARNetConfig.from_ablation(
        "baseline", vision_config=ViTConfig(patch_size=16, **fields), id2label={i: f"dish_{i}" for i in range(4)}
    )
    MARNetForImageClassification(config).save_pretrained(directory)
    ViTImageProcessor(size={"height": fields["image_size"], "width": fields["image_size"]}).save_pretrained(directory)
    return directory


def pipeline_rate(args, work, repeats=3):
    """{processor: median images/s} of the image-classification pipeline on 512x384 JPEG files."""
    model_dir = saved_classifier(work / "classifier", args.tower)
    files = []
    for index, data in enumerate(photos(*SIZES["512x384"], args.images)):
        files.append(work / "pipeline" / f"{index}.jpg")
        files[-1].parent.mkdir(exist_ok=True)
        files[-1].write_bytes(data)
    processors = {
        "pil backend": AutoImageProcessor.from_pretrained(model_dir, backend="pil"),
        "fast (use_fast=True, torchvision)": AutoImageProcessor.from_pretrained(model_dir, use_fast=True),
    }
    classifiers = {
        name: pipeline("image-classification", model=str(model_dir), image_processor=processor)
        for name, processor in processors.items()
    }
    samples = {name: [] for name in classifiers}
    for _ in range(repeats):
        for name, classifier in classifiers.items():
            started = time.perf_counter()
            classifier([str(path) for path in files], batch_size=args.batch_size)
            samples[name].append(len(files) / (time.perf_counter() - started))
    results = {name: statistics.median(values) for name, values in samples.items()}
    print("pipeline images/s:", {name: round(value, 1) for name, value in results.items()}, flush=True)
    return results


def plot(per_core_results, path):
    rows = [row[: -len(" old")] for row in next(iter(per_core_results.values())) if row.endswith(" old")]
    figure, axes = pyplot().subplots(1, len(per_core_results), figsize=(6 * len(per_core_results), 3.8), sharey=True)
    for axis, (size_name, values) in zip(np.atleast_1d(axes), per_core_results.items()):
        positions = np.arange(len(rows))
        old = [values[f"{row} old"] for row in rows]
        axis.bar(positions - 0.27, old, 0.27, label="before (PIL + processor)")
        for offset, (variant, label) in zip((0.0, 0.27), NEW_VARIANTS.items()):
            new = [values[f"{row} {variant}"] for row in rows]
            axis.bar(positions + offset, new, 0.27, label=label)
            for position, (before, after) in enumerate(zip(old, new)):
                axis.text(position + offset, after, f"{after / before:.1f}x", ha="center", va="bottom", fontsize=7)
        axis.set_xticks(positions, rows, fontsize=8)
        axis.set_title(f"{size_name} JPEG -> 224 px, one core")
    np.atleast_1d(axes)[0].set_ylabel("images per CPU-second")
    np.atleast_1d(axes)[0].legend(fontsize=8)
    figure.tight_layout()
    save_figure(figure, path, dpi=120)


def main():
    args = parse_args()
    steps = args.only or ("per_core", "parity", "decode", "end_to_end", "pipeline")
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="marnet-data-loader-"))
    results = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor(),
            "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "note": args.note,
        },
        "config": {
            key: value for key, value in vars(args).items() if key not in ("output", "plot", "work_dir", "note")
        },
    }
    try:
        if {"per_core", "parity", "gpu_decode_check"} & set(steps):
            data = {name: photo_dataset(work / name, *size, args.images) for name, size in SIZES.items()}
        if "per_core" in steps:
            results["per_core"] = per_core(args, data)
            results["per_core_ratio"] = {
                size_name: {
                    row.replace(" new", ""): value / values[f"{row.split(' new')[0]} old"]
                    for row, value in values.items()
                    if " new" in row
                }
                for size_name, values in results["per_core"].items()
            }
            plot(results["per_core"], args.plot)
        if "parity" in steps:
            results["parity_levels"] = parity(data, args.image_size)
        if "decode" in steps:
            results["decode"] = decode_rates(args.images, args.rounds)
            results["decode_ratio"] = decode_ratios(results["decode"])
        if "gpu_decode_check" in steps:
            results["gpu_decode_check"] = gpu_decode_check(data, args.image_size, args.batch_size)
        if "end_to_end" in steps:
            runs = end_to_end(args, work)
            results["end_to_end"] = {"runs": runs, "median": {k: statistics.median(v) for k, v in runs.items()}}
        if "pipeline" in steps:
            results["pipeline"] = pipeline_rate(args, work)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    atomic_write_json(args.output, results)
    print(json.dumps({key: results[key] for key in results if key not in ("config", "machine")}, indent=2))


if __name__ == "__main__":
    main()
