"""Fine-tuning a full MARNet on images alone under DDP with `find_unused_parameters=False`: what fails without
`image_only_training` and works with it, in one process (a world of 1 already has DDP's reducer) and in a real
2-process gloo launch (the launch of tests/test_train_distributed.py) of `transformers.Trainer` with gradient
checkpointing, which is when Trainer turns unused-parameter detection off."""

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch.nn.parallel import DistributedDataParallel
from transformers.testing_utils import CaptureLogger
from transformers.utils import logging

from modeling_marnet import MARNetForImageClassification
from tiny_marnet import tiny_batch, tiny_config
from train_fixtures import free_port, offline_env, run_command, two_process_launcher

# Only text trains these in the full model (with the visual projection as the visual classifier's feature).
TEXT_ONLY = (
    "marnet.alignment.text_projection.dense.weight",
    "marnet.alignment.text_projection.dense.bias",
    "marnet.alignment.logit_scale",
)


@pytest.fixture
def process_group():
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_ddp_without_unused_parameter_detection_needs_image_only_training(process_group):
    pixel_values, _, labels = tiny_batch()

    def three_image_steps(**overrides):
        torch.manual_seed(0)
        config = tiny_config("full", visual_features="projection", **overrides)
        model = DistributedDataParallel(MARNetForImageClassification(config), find_unused_parameters=False)
        for _ in range(3):
            model(pixel_values, labels=labels).loss.backward()

    three_image_steps(image_only_training=True)
    with CaptureLogger(logging.get_logger("modeling_marnet.modeling_marnet")) as captured:
        with pytest.raises(RuntimeError, match="Expected to have finished reduction in the prior iteration"):
            three_image_steps()
    assert "load with `from_pretrained(path, image_only_training=True)`, which freezes them" in captured.out


@pytest.fixture(scope="module")
def full_checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("image-only")
    torch.manual_seed(0)
    MARNetForImageClassification(tiny_config("full", visual_features="projection")).save_pretrained(root / "full")
    return root, root / "full"


def assert_only_the_image_trained_parameters_changed(checkpoint, fine_tuned):
    before = load_file(Path(checkpoint) / "model.safetensors")
    after = load_file(Path(fine_tuned) / "model.safetensors")
    for name in TEXT_ONLY:
        assert torch.equal(after[name], before[name]), f"{name} changed although frozen"
    assert not torch.equal(after["visual_classifier.weight"], before["visual_classifier.weight"])


def test_trainer_with_gradient_checkpointing_on_two_processes(full_checkpoint):
    root, checkpoint = full_checkpoint
    output_dir = root / "trainer"
    script = Path(__file__).with_name("image_only_trainer_run.py")
    result = run_command(
        [*two_process_launcher(), str(script), str(checkpoint), str(output_dir)],
        env=offline_env(ACCELERATE_USE_CPU="1"),
    )
    assert result.returncode == 0, result.stderr[-4000:]
    run = json.loads((output_dir / "run.json").read_text())
    assert run == {"world_size": 2, "ddp": True, "find_unused_parameters": False, "steps": 3}
    assert_only_the_image_trained_parameters_changed(checkpoint, output_dir)
