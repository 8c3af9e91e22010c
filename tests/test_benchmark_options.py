"""The timing scripts' FIELD=VALUE options: a malformed entry is a usage error (exit status 2, the option named),
caught before any model is built or timed."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize(
    "script, arguments, option",
    [
        ("speed.py", ["--marnet-config", "denoiser_hidden_size"], "--marnet-config"),
        ("onnx_latency.py", ["--marnet-config", "=256"], "--marnet-config"),
        ("train_step.py", ["--compare", "denoiser_hidden_size=256", "steps"], "--compare"),
    ],
)
def test_malformed_field_value_is_a_usage_error_naming_the_option(script, arguments, option):
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *arguments], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert f"{script}: error: argument {option}: expected FIELD=VALUE, got " in result.stderr
    assert "Traceback" not in result.stderr
