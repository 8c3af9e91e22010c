"""The ingredient-auxiliary competitor (`--ablation ingredients`): the visual-only baseline that also predicts each
image's ingredients. It trains from the dataset's ingredient column without a text encoder, and what it saves is a
plain image classifier: Auto classes and the pipeline, from images alone (remote code: test_auto_and_pipeline)."""

import json

import datasets
import pytest
import torch
from transformers import AutoModelForImageClassification, pipeline

from marnet_cli.errors import CLIError
from marnet_cli.run_folder import RunFolder
from modeling_marnet import MARNetForImageClassification
from modeling_marnet.training.data_checks import ingredient_vocabulary
from tiny_marnet import tiny_batch, tiny_config
from train_fixtures import (
    CLASS_COLOURS,
    INGREDIENTS,
    make_dataset_dict,
    module_command,
    run_command,
    save_dataset,
    save_vision_tower,
    tiny_model_args,
)


@pytest.fixture(scope="module")
def ingredient_run(tmp_path_factory):
    """A few steps of the ingredients row on the tiny dataset, no --text_encoder given."""
    root = tmp_path_factory.mktemp("ingredients")
    output_dir = root / "run"
    result = run_command(
        module_command(
            "modeling_marnet.train",
            "--dataset",
            save_dataset(root / "dataset"),
            "--vision_model",
            save_vision_tower(root / "tower"),
            "--ablation",
            "ingredients",
            "--output_dir",
            output_dir,
            "--max_steps",
            4,
            "--per_device_train_batch_size",
            6,
            "--learning_rate",
            3e-3,
            "--logging_steps",
            1,
            "--checkpointing_steps",
            0,
            "--report_to",
            "none",
            *tiny_model_args(),
        )
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return RunFolder(output_dir)


def test_the_row_learns_the_ingredient_column_without_text(ingredient_run):
    training_args = json.loads(ingredient_run.training_args_file.read_text())
    assert training_args["ablation"] == "ingredients" and training_args["text_encoding"] is None
    losses = [record for record in ingredient_run.history() if "ingredient_loss" in record]
    assert len(losses) == 4 and all(record["ingredient_loss"] > 0 for record in losses)
    config = json.loads((ingredient_run.path / "config.json").read_text())
    assert config["ingredient_names"] == INGREDIENTS and config["num_ingredients"] == len(INGREDIENTS)
    assert config["ingredient_loss_weight"] == 1.0
    assert (config["use_alignment"], config["reconstruction"]) == (False, "none")


def test_the_saved_row_classifies_images_alone_through_auto_classes_and_the_pipeline(ingredient_run):
    model = AutoModelForImageClassification.from_pretrained(ingredient_run.path).eval()
    assert type(model) is MARNetForImageClassification
    pixel_values, _, _ = tiny_batch(batch_size=2)
    with torch.no_grad():
        output = model(pixel_values)
    assert output.logits.shape == (2, len(CLASS_COLOURS))  # the class logits, not the ingredients'
    assert output.ingredient_logits.shape == (2, len(INGREDIENTS))
    image = make_dataset_dict({"test": 1})["test"][0]["image"]
    predictions = pipeline("image-classification", model=str(ingredient_run.path))(image, top_k=2)
    assert {prediction["label"] for prediction in predictions} <= set(CLASS_COLOURS)


def test_the_ingredient_column_must_exist_and_hold_class_labels():
    train = make_dataset_dict({"train": 4})["train"]
    assert ingredient_vocabulary(train, "train", "ingredients") == INGREDIENTS
    with pytest.raises(CLIError, match=r"split 'train' has no 'tags' column .* Pass --ingredient_column"):
        ingredient_vocabulary(train, "train", "tags")
    as_ids = train.cast_column("ingredients", datasets.List(datasets.Value("int64")))
    with pytest.raises(CLIError, match=r"must be a list of datasets.ClassLabel per row .* got List\(Value\('int64'"):
        ingredient_vocabulary(as_ids, "train", "ingredients")


def test_the_ingredient_loss_is_bce_on_the_tower_feature_and_configs_without_the_head_load_unchanged(tmp_path):
    config = tiny_config("ingredients", num_ingredients=3, ingredient_names=["egg", "rice", "leek"])
    model = MARNetForImageClassification(config)
    pixel_values, _, labels = tiny_batch()
    targets = torch.tensor([[1, 0, 1], [0, 0, 0], [1, 1, 1], [0, 1, 0]], dtype=torch.float32)
    output = model(pixel_values, labels=labels, ingredient_labels=targets)
    image_embeds = model.marnet(pixel_values).image_embeds
    expected = torch.nn.functional.binary_cross_entropy_with_logits(model.ingredient_classifier(image_embeds), targets)
    torch.testing.assert_close(output.ingredient_loss, expected)
    torch.testing.assert_close(output.loss, output.visual_classification_loss + expected)
    with pytest.raises(ValueError, match=r"shape \(batch_size, num_ingredients\) = \(4, 3\), got \(4, 2\)"):
        model(pixel_values, ingredient_labels=targets[:, :2])
    unweighted = MARNetForImageClassification(tiny_config("baseline", num_ingredients=3))
    assert not any(parameter.requires_grad for parameter in unweighted.ingredient_classifier.parameters())
    with pytest.raises(ValueError, match="`num_ingredients=0` builds none"):
        tiny_config("ingredients")

    # A config saved before the ingredient fields existed: no head, same logits.
    baseline = MARNetForImageClassification(tiny_config("baseline")).eval()
    baseline.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    for key in ("ingredient_loss_weight", "num_ingredients", "ingredient_names"):
        del saved[key]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    reloaded = MARNetForImageClassification.from_pretrained(tmp_path).eval()
    assert reloaded.ingredient_classifier is None and reloaded.config.ingredient_loss_weight == 0
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values).logits, baseline(pixel_values).logits, rtol=0, atol=0)
