"""benchmarks/gpu_check.py at tiny sizes on the CPU: every section runs and reaches the JSON and the printout, so the
script is ready to run when a GPU is."""

import json

import pytest
import torch

from train_fixtures import REPO_ROOT


def test_tiny_cpu_run_reports_every_section(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(REPO_ROOT / "benchmarks"))
    import gpu_check

    output = tmp_path / "gpu_check.json"
    argv = ["--tiny", "--device", "cpu", "--peak-tflops", "1", "--output", str(output)]
    report = gpu_check.main(argv)
    assert json.loads(output.read_text()) == report

    training = report["training"]
    seconds, tflop = training["seconds_per_step"], training["tflop_per_step"]
    assert training["step_time_ratio"] == pytest.approx(seconds["marnet"] / seconds["backbone"])
    assert 0 < tflop["backbone"] < tflop["marnet"]  # MARNet adds heads to the same tower
    for name in ("backbone", "marnet"):
        assert training["images_per_second"][name] == pytest.approx(2 / seconds[name])
        assert training["mfu"][name] == pytest.approx(tflop[name] / seconds[name])  # a peak of 1 TFLOP/s
        assert report["inference"]["images_per_second"][name] > 0
    compiled = report["torch_compile"]
    assert compiled["speedup"] == pytest.approx(
        compiled["eager_seconds_per_step"] / compiled["compiled_seconds_per_step"]
    )
    assert report["data_path"]["max_levels"] == 0  # deferred decoding on the CPU is the workers' decoding
    assert set(report["data_path"]["images_per_second"]) == {"cpu", "gpu_decode"}
    printed = capsys.readouterr().out
    for line in ("train images/s", "MFU", "inference images/s", "torch.compile (eager)", "--gpu_decode"):
        assert line in printed


def test_the_batch_search_keeps_the_largest_power_of_two_that_trains(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT / "benchmarks"))
    import gpu_check

    def step_fitting_up_to_96_images(model, optimizer, step_inputs, steps, device, bf16):
        if step_inputs()["pixel_values"].shape[0] > 96:
            raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(gpu_check, "time_steps", step_fitting_up_to_96_images)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
    search = dict(image_size=8, num_labels=3, device=torch.device("cpu"))
    assert gpu_check.largest_fitting_batch(None, optimizer, max_batch_size=2048, **search) == 64
    assert gpu_check.largest_fitting_batch(None, optimizer, max_batch_size=32, **search) == 32
