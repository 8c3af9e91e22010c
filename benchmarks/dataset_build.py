"""Build rate of the dataset builders (images/s) with `--num-proc` 1 and 2.

Writes a raw Vireo-Food172 archive of `--num-images` small JPEGs (172 class folders, 353 ingredient
columns, the real layout) into a temp dir, then times `download_and_prepare` (index parsing, reading
and checking every image, writing Arrow) for each worker count, interleaved, and reports the median
wall-clock rate and the CPU time per image (workers included): on a machine
busy with other work the wall-clock gain of more workers shrinks, the CPU cost does not.

    python benchmarks/dataset_build.py                       # 10k images of 64 px, num_proc 1 and 2
    python benchmarks/dataset_build.py --num-images 2000 --num-proc 1 2 4
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import random
import resource
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import datasets
from PIL import Image

from dataset_scripts import VireoFood172
from marnet_cli.files import atomic_write_json

RESULTS = Path(__file__).parent / "results"
NUM_CLASSES, NUM_INGREDIENTS = 172, 353
SPLIT_SHARES = {"TR.txt": 0.6, "VAL.txt": 0.1, "TE.txt": 0.3}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-images", type=int, default=10_000)
    parser.add_argument("--image-size", type=int, default=64, help="side of the fixture JPEGs in pixels")
    parser.add_argument("--num-proc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=2, help="timed builds per worker count (median reported)")
    parser.add_argument("--output", type=Path, default=RESULTS / "dataset_build.json")
    return parser.parse_args()


def write_raw_vireo(root: Path, num_images: int, image_size: int) -> None:
    """A Vireo-Food172 raw archive of `num_images` distinct random JPEGs."""
    rng = random.Random(0)
    annotations = root / "SplitAndIngreLabel"
    annotations.mkdir(parents=True)
    (annotations / "FoodList.txt").write_text("".join(f"Dish {n}\n" for n in range(1, NUM_CLASSES + 1)))
    (annotations / "IngredientList.txt").write_text("".join(f"Ingredient {j}\n" for j in range(NUM_INGREDIENTS)))
    paths = [f"/{index % NUM_CLASSES + 1}/{index}_{rng.randrange(100)}.jpg" for index in range(num_images)]
    rng.shuffle(paths)
    rows, start = [], 0
    for split_index, (file_name, share) in enumerate(SPLIT_SHARES.items()):
        end = num_images if split_index == len(SPLIT_SHARES) - 1 else start + round(share * num_images)
        listed = sorted(paths[start:end], key=lambda path: path.split("/")[1])  # grouped by folder, string order
        (annotations / file_name).write_text("".join(f"{path}\n" for path in listed))
        start = end
    for index, path in enumerate(paths):
        image_file = root / "ready_chinese_food" / path.lstrip("/")
        image_file.parent.mkdir(parents=True, exist_ok=True)
        pixels = os.urandom(image_size * image_size * 3) if index % 2 else bytes(image_size * image_size * 3)
        buffer = io.BytesIO()
        Image.frombytes("RGB", (image_size, image_size), pixels).save(buffer, format="JPEG", quality=85)
        image_file.write_bytes(buffer.getvalue())
        values = ["1" if rng.random() < 0.02 else "-1" for _ in range(NUM_INGREDIENTS)]
        rows.append(f"{path} {' '.join(values)}\n")
    (annotations / "IngreLabel.txt").write_text("".join(rows))


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished worker processes."""
    return sum(
        usage.ru_utime + usage.ru_stime
        for usage in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
    )


def timed_build(raw: Path, cache_dir: Path, num_proc: int) -> tuple[float, float]:
    """Wall and CPU seconds to parse the index and write every split (a fresh cache each time)."""
    start, start_cpu = time.perf_counter(), cpu_seconds()
    builder = VireoFood172(data_dir=str(raw), cache_dir=str(cache_dir))
    builder.download_and_prepare(num_proc=num_proc)
    return time.perf_counter() - start, cpu_seconds() - start_cpu


def main():
    args = parse_args()
    datasets.disable_progress_bars()
    load_at_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as scratch:
        raw = Path(scratch) / "raw"
        write_raw_vireo(raw, args.num_images, args.image_size)
        raw_bytes = sum(path.stat().st_size for path in (raw / "ready_chinese_food").rglob("*.jpg"))
        seconds = {num_proc: [] for num_proc in args.num_proc}
        cpu = {num_proc: [] for num_proc in args.num_proc}
        for repeat in range(args.repeats):
            for num_proc in args.num_proc:
                wall, cpu_time = timed_build(raw, Path(scratch) / f"cache-{repeat}-{num_proc}", num_proc)
                seconds[num_proc].append(wall)
                cpu[num_proc].append(cpu_time)
    results = {
        "date": date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "load_average_at_start": load_at_start,  # other work on the machine competes with the workers
        "num_images": args.num_images,
        "image_size": args.image_size,
        "mean_image_bytes": raw_bytes / args.num_images,
        "runs": {
            str(num_proc): {
                "seconds": runs,
                "median_seconds": statistics.median(runs),
                "images_per_second": args.num_images / statistics.median(runs),
                "cpu_ms_per_image": 1000 * statistics.median(cpu[num_proc]) / args.num_images,
            }
            for num_proc, runs in seconds.items()
        },
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.output, results)
    for num_proc, run in results["runs"].items():
        print(
            f"num_proc={num_proc}: {run['images_per_second']:.0f} images/s (median of {args.repeats}: "
            f"{run['median_seconds']:.1f} s), {run['cpu_ms_per_image']:.2f} CPU ms/image"
        )
    print(f"load average at start: {load_at_start:.2f} on {os.cpu_count()} CPUs")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
