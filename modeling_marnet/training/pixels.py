"""The image processor's steps, split between the DataLoader workers and the training step.

A transformers image processor resizes and crops each image, then rescales and normalises the batch. Here the
per-image half runs in the workers on uint8 tensors, and the per-batch half once per batch in the training step, on
the accelerator when there is one (uint8 batches also cross to the device four times lighter than float ones). Both
halves call the processor's own methods, in the order its `_preprocess` calls them, so the pixel values are the
processor's for the same decoded image: the saved processor stays the inference contract.

Processors whose steps cannot be split so (a model-specific `_preprocess`, padding, a PIL backend) run whole on each
image in the workers instead, giving float pixel values that the training step leaves as they are.
"""

import torch
from torchvision.transforms.v2 import functional as F
from transformers.image_processing_backends import TorchvisionBackend
from transformers.image_utils import SizeDict

# The methods that make up a torchvision processor's call; a processor overriding none of them runs
# resize -> center crop -> rescale and normalize -> pad, each step its own (possibly overridden) method.
STANDARD_CALL = ("preprocess", "_preprocess_image_like_inputs", "_prepare_image_like_inputs", "_preprocess")


def splits_into_steps(image_processor):
    """Whether the processor runs transformers' standard torchvision steps without padding, so that its resize and
    crop can run per image and its rescale and normalize per batch."""
    return (
        isinstance(image_processor, TorchvisionBackend)
        and not getattr(image_processor, "do_pad", False)
        and all(getattr(type(image_processor), name) is getattr(TorchvisionBackend, name) for name in STANDARD_CALL)
    )


class ProcessorResize:
    """uint8 image (3, H, W) -> uint8 image (3, h, w): the image processor's resize and center crop, as configured."""

    def __init__(self, image_processor):
        self.image_processor = image_processor
        self.size = SizeDict(**dict(image_processor.size)) if image_processor.do_resize else None
        self.crop_size = SizeDict(**dict(image_processor.crop_size)) if image_processor.do_center_crop else None

    def __call__(self, image):
        if self.size is not None:
            image = self.image_processor.resize(image, size=self.size, resample=self.image_processor.resample)
        if self.crop_size is not None:
            image = self.image_processor.center_crop(image, self.crop_size)
        return image


class ProcessorTransform:
    """uint8 image (3, H, W) -> float pixel values (3, h, w): the whole image processor, on the image as PIL (the
    path for processors that do not split into steps)."""

    def __init__(self, image_processor):
        self.image_processor = image_processor

    def __call__(self, image):
        return self.image_processor(images=F.to_pil_image(image), return_tensors="pt")["pixel_values"][0]


def per_image_transform(image_processor):
    """The processor's per-image half: [`ProcessorResize`] (uint8 out) when it splits into steps, else
    [`ProcessorTransform`] (float out)."""
    if splits_into_steps(image_processor):
        return ProcessorResize(image_processor)
    return ProcessorTransform(image_processor)


class PixelNormalization:
    """The processor's per-batch half: a batch whose `pixel_values` are uint8 (B, 3, h, w) -> the same batch with the
    processor's float32 pixel values, computed on their device, contiguous as the processor gives them. Float pixel
    values (from [`ProcessorTransform`]) are only made contiguous."""

    def __init__(self, image_processor):
        self.image_processor = image_processor

    def __call__(self, batch):
        pixel_values = batch["pixel_values"]
        if pixel_values.dtype != torch.uint8:
            return {**batch, "pixel_values": pixel_values.contiguous()}
        processor = self.image_processor
        pixel_values = processor.rescale_and_normalize(
            pixel_values.to(torch.float32, memory_format=torch.contiguous_format),
            processor.do_rescale,
            processor.rescale_factor,
            processor.do_normalize,
            _hashable(processor.image_mean),
            _hashable(processor.image_std),
        )
        return {**batch, "pixel_values": pixel_values.to(torch.float32)}


def _hashable(value):
    # The processor caches its fused mean/std tensors by these arguments.
    return tuple(value) if isinstance(value, list) else value
