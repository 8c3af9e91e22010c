"""benchmarks/data_loader.py on a few photos: the per-core rows, the pixel parity, the decoders side by side, the JSON
and the plot it writes."""

import json
import sys

from train_fixtures import REPO_ROOT, run_command

SCRIPT = REPO_ROOT / "benchmarks" / "data_loader.py"


def test_per_core_rows_parity_and_decoders_are_written(tmp_path):
    output, plot = tmp_path / "data_loader.json", tmp_path / "data_loader.png"
    result = run_command(
        [sys.executable, str(SCRIPT), "--only", "per_core", "parity", "decode", "--images", "2", "--rounds", "1"]
        + ["--batch-size", "2", "--presets", "crop_flip", "--output", str(output), "--plot", str(plot)]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(output.read_text())
    rows = {
        f"{path} {variant}"
        for path in ("eval", "train crop_flip")
        for variant in ("old", "new", "new, normalised on the accelerator")
    }
    for size in ("512x384", "1024x768"):
        assert set(results["per_core"][size]) == rows
        assert all(value > 0 for value in results["per_core"][size].values())
        ratios = results["per_core_ratio"][size]
        assert ratios["eval"] == results["per_core"][size]["eval new"] / results["per_core"][size]["eval old"]
    assert all(levels <= 1 for levels in results["parity_levels"].values())
    for size, formats in results["decode"].items():
        assert set(formats) == {"jpeg", "png", "webp"}
        jpeg, ratios = formats["jpeg"], results["decode_ratio"][size]["jpeg"]
        assert set(jpeg) == {"torchvision", "torchcodec", "pil"} and all(rate > 0 for rate in jpeg.values())
        assert ratios["torchcodec / torchvision"] == jpeg["torchcodec"] / jpeg["torchvision"]
    assert plot.stat().st_size > 0
