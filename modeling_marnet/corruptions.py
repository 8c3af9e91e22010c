"""Image corruptions for robustness evaluation, after ImageNet-C (Hendrycks & Dietterich, ICLR 2019).

A corruption degrades a decoded uint8 image (3, H, W) the way a sensor, a lens, an obstacle or a codec would, before
the image processor resizes and normalises it. Each has five severities (1 = mild, 5 = severe) and is
**deterministic per image**: its random draws (noise, occluder position) are seeded by the corruption, the severity
and the image's pixels, so every model sees exactly the same corrupted image. The output is uint8 in [0, 255].

Spatial parameters (blur widths, occluder sizes) are given for a 224-pixel image, ImageNet-C's size, and scaled by
`min(H, W) / 224`, so a corruption degrades a 48-pixel and a 1024-pixel photo alike. docs/robustness.md lists every
parameter.

    from modeling_marnet.corruptions import CORRUPTIONS, corrupt
    noisy = corrupt(image, "gaussian_noise", severity=3)  # uint8 (3, H, W) -> uint8 (3, H, W)

`marnet-eval --corruption NAME --severity K` scores any image classifier on a corrupted split, and
`benchmarks/robustness.py` scores run folders on every corruption and severity.
"""

import io
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# Image side, in pixels, at which the spatial parameters below are given (ImageNet-C's).
REFERENCE_SIDE = 224
SEVERITIES = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class Corruption:
    """One corruption: `parameters[k - 1]` is its parameter at severity k, in the unit `parameter` names.
    `apply(image, parameter, scale, generator)` maps a float image (3, H, W) in [0, 1] to another, unclipped;
    `scale` is `min(H, W) / REFERENCE_SIDE`."""

    name: str
    family: str
    parameter: str
    parameters: tuple
    apply: Callable


def _gaussian_noise(image, sigma, scale, generator):
    return image + sigma * torch.randn(image.shape, generator=generator)


def _shot_noise(image, photons, scale, generator):
    # Each channel value counts `photons * value` photons, Poisson-distributed.
    return torch.poisson(image * photons, generator=generator) / photons


def _impulse_noise(image, amount, scale, generator):
    # A fraction `amount` of the values (per channel) turns black or white with equal odds (salt and pepper).
    hit = torch.rand(image.shape, generator=generator) < amount
    salt = torch.rand(image.shape, generator=generator) < 0.5
    return torch.where(hit, salt.to(image.dtype), image)


def _convolve(image, kernel):
    """(3, H, W) convolved per channel with a (kh, kw) kernel, edges reflected (replicated where reflection would
    need more pixels than the image has)."""
    pad_y, pad_x = kernel.shape[0] // 2, kernel.shape[1] // 2
    mode = "replicate" if max(pad_y, pad_x) >= min(image.shape[-2:]) else "reflect"
    batch = F.pad(image[None], (pad_x, pad_x, pad_y, pad_y), mode=mode)
    weight = kernel.to(image.dtype).expand(3, 1, *kernel.shape)
    return F.conv2d(batch, weight, groups=3)[0]


def _gaussian_blur(image, sigma, scale, generator):
    sigma = sigma * scale
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    profile = torch.exp(-0.5 * (x / sigma) ** 2)
    profile /= profile.sum()
    return _convolve(_convolve(image, profile[None, :]), profile[:, None])  # separable: rows, then columns


def _disk_kernel(radius, supersampling=8):
    """A (k, k) kernel: the area of each pixel inside a disk of `radius` pixels (sub-pixel radii blur a little)."""
    size = 2 * math.ceil(radius) + 1
    offsets = (torch.arange(size * supersampling, dtype=torch.float64) + 0.5) / supersampling - size / 2
    inside = (offsets[:, None] ** 2 + offsets[None, :] ** 2) <= radius**2  # (k*s, k*s)
    kernel = inside.to(torch.float64).reshape(size, supersampling, size, supersampling).mean(dim=(1, 3))
    return kernel / kernel.sum()


def _defocus_blur(image, radius, scale, generator):
    return _convolve(image, _disk_kernel(max(radius * scale, 0.5)))


def _pixelate(image, factor, scale, generator):
    height, width = image.shape[-2:]
    small = (max(1, round(height * factor)), max(1, round(width * factor)))
    blocks = F.interpolate(image[None], size=small, mode="area")
    return F.interpolate(blocks, size=(height, width), mode="nearest")[0]


def _jpeg_compression(image, quality, scale, generator):
    pixels = (image * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()  # (H, W, 3)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    return torch.from_numpy(decoded.copy()).permute(2, 0, 1).to(image.dtype) / 255


def _contrast(image, factor, scale, generator):
    mean = image.mean()
    return (image - mean) * factor + mean


def _occlusion(image, area, scale, generator):
    # One rectangle of a uniform random colour covering `area` of the image, aspect ratio log-uniform in [1/2, 2],
    # at a uniform random position inside the image.
    height, width = image.shape[-2:]
    log_ratio = (torch.rand((), generator=generator).item() * 2 - 1) * math.log(2)
    box_height = min(height, max(1, round(math.sqrt(area * height * width * math.exp(log_ratio)))))
    box_width = min(width, max(1, round(math.sqrt(area * height * width / math.exp(log_ratio)))))
    top = int(torch.randint(0, height - box_height + 1, (), generator=generator))
    left = int(torch.randint(0, width - box_width + 1, (), generator=generator))
    colour = torch.rand(3, 1, 1, generator=generator, dtype=image.dtype)
    occluded = image.clone()
    occluded[:, top : top + box_height, left : left + box_width] = colour
    return occluded


CORRUPTIONS = {
    corruption.name: corruption
    for corruption in (
        Corruption("gaussian_noise", "noise", "std on [0, 1]", (0.08, 0.12, 0.18, 0.26, 0.38), _gaussian_noise),
        Corruption("shot_noise", "noise", "photons at full intensity", (60, 25, 12, 5, 3), _shot_noise),
        Corruption("impulse_noise", "noise", "fraction of values hit", (0.03, 0.06, 0.09, 0.17, 0.27), _impulse_noise),
        Corruption("gaussian_blur", "blur", "std in pixels at 224 px", (1, 2, 3, 4, 6), _gaussian_blur),
        Corruption("defocus_blur", "blur", "disk radius in pixels at 224 px", (3, 4, 6, 8, 10), _defocus_blur),
        Corruption("pixelate", "digital", "side kept", (0.6, 0.5, 0.4, 0.3, 0.25), _pixelate),
        Corruption("jpeg_compression", "digital", "JPEG quality", (25, 18, 15, 10, 7), _jpeg_compression),
        Corruption("contrast", "digital", "contrast kept", (0.4, 0.3, 0.2, 0.1, 0.05), _contrast),
        Corruption("occlusion", "occlusion", "fraction of the area covered", (0.1, 0.2, 0.3, 0.4, 0.5), _occlusion),
    )
}
FAMILIES = tuple(dict.fromkeys(corruption.family for corruption in CORRUPTIONS.values()))


def check_corruption(name, severity):
    """Raises ValueError unless `name` is a corruption of `CORRUPTIONS` and `severity` one of `SEVERITIES`."""
    if name not in CORRUPTIONS:
        raise ValueError(f"Unknown corruption {name!r}: expected one of {', '.join(CORRUPTIONS)}.")
    if isinstance(severity, bool) or severity not in SEVERITIES:
        raise ValueError(f"Corruption severity must be an integer in 1-5, got {severity!r}.")


def corrupt(image, name, severity):
    """uint8 image (3, H, W) -> the same image corrupted by `name` at `severity` (1-5), uint8 (3, H, W).
    Deterministic: the same pixels, corruption and severity always give the same output."""
    check_corruption(name, severity)
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"corrupt() takes a uint8 RGB image (3, H, W), got {image.dtype} {tuple(image.shape)}.")
    corruption = CORRUPTIONS[name]
    pixels = image.cpu().contiguous()
    seed = zlib.crc32(pixels.numpy().tobytes(), zlib.crc32(f"{name}/{severity}".encode()))
    generator = torch.Generator().manual_seed(seed)
    scale = min(image.shape[-2:]) / REFERENCE_SIDE
    degraded = corruption.apply(pixels.to(torch.float32) / 255, corruption.parameters[severity - 1], scale, generator)
    return (degraded * 255).round().clamp(0, 255).to(torch.uint8).to(image.device)


class ImageCorruption:
    """`corrupt` as a per-image step of the evaluation data path: `(image, index) -> image`, uint8 (3, H, W), the
    signature of the training augmentation (`training.batches.ImagePreprocessing(processor, augmentation=...)`),
    applied to the decoded image before the processor's steps. The row index does not enter the draws."""

    def __init__(self, name, severity):
        check_corruption(name, severity)
        self.name = name
        self.severity = severity

    def set_epoch(self, epoch):
        """Accelerate's data loaders set the epoch of the data path on every pass; a corruption is the same in each."""

    def __call__(self, image, index=None):
        return corrupt(image, self.name, self.severity)

    def __repr__(self):
        return f"{type(self).__name__}({self.name!r}, severity={self.severity})"
