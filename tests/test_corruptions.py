"""Image corruptions (`modeling_marnet.corruptions`): deterministic per image, uint8 in [0, 255], the same whatever
the order or the model, and degrading more with severity."""

import pytest
import torch

from modeling_marnet.corruptions import CORRUPTIONS, FAMILIES, SEVERITIES, ImageCorruption, corrupt


def photo(seed, height=40, width=56):
    """A smooth uint8 (3, H, W) image with some texture, like a small photo."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 5, 7, generator=generator)
    image = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)[0]
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_every_corruption_is_deterministic_bounded_and_changes_the_image(name):
    image, other = photo(0), photo(1)
    for severity in SEVERITIES:
        first = corrupt(image, name, severity)
        assert first.dtype == torch.uint8 and first.shape == image.shape
        # The draws depend on the pixels, not on what was corrupted before or on the caller's RNG state.
        corrupt(other, name, severity)
        torch.manual_seed(123)
        assert torch.equal(corrupt(image.clone(), name, severity), first)
        assert torch.equal(ImageCorruption(name, severity)(image, 7), first)
    assert not torch.equal(corrupt(image, name, 5), image)
    assert torch.equal(image, photo(0)), "the input image must not be modified in place"


@pytest.mark.parametrize("name", ["gaussian_noise", "shot_noise", "impulse_noise", "contrast", "defocus_blur"])
def test_damage_grows_with_severity(name):
    image = photo(2, 96, 128)
    damage = [(corrupt(image, name, s).float() - image.float()).abs().mean().item() for s in SEVERITIES]
    assert damage == sorted(damage) and damage[0] > 0


def test_noise_reaches_both_ends_of_the_range_and_stays_inside_it():
    image = torch.full((3, 32, 32), 250, dtype=torch.uint8)
    noisy = corrupt(image, "gaussian_noise", 5)
    assert noisy.max() == 255 and noisy.min() < 200  # clipped at 255, not wrapped around to small values


def test_spatial_parameters_scale_with_the_image():
    # An occluder covers the same fraction of a small and a large image.
    for size in (48, 224):
        image = torch.zeros(3, size, size, dtype=torch.uint8)
        covered = (corrupt(image, "occlusion", 3) != 0).any(dim=0).float().mean().item()
        assert covered == pytest.approx(0.3, abs=0.06)


def test_families_cover_the_kinds_of_degradation():
    assert set(FAMILIES) == {"noise", "blur", "digital", "occlusion"}
    assert {"gaussian_noise", "gaussian_blur", "occlusion", "jpeg_compression", "contrast"} <= set(CORRUPTIONS)


def test_bad_arguments_are_clear_errors():
    image = photo(0)
    with pytest.raises(ValueError, match="Unknown corruption 'fog': expected one of gaussian_noise"):
        corrupt(image, "fog", 1)
    with pytest.raises(ValueError, match="severity must be an integer in 1-5, got 6"):
        corrupt(image, "contrast", 6)
    with pytest.raises(ValueError, match=r"uint8 RGB image \(3, H, W\), got torch.float32"):
        corrupt(image.float(), "contrast", 1)


def test_marnet_eval_help_names_every_corruption():
    from dataclasses import fields

    from marnet_cli.eval_args import EvalArguments

    help_text = next(f for f in fields(EvalArguments) if f.name == "corruption").metadata["help"]
    assert all(name in help_text for name in CORRUPTIONS)
