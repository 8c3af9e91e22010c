"""Decoding dataset images into uint8 RGB tensors: TorchCodec (libjpeg-turbo, libpng, libwebp) where it gives exactly
what PIL gives, PIL otherwise.

The contract is what the image processor sees at inference: `pipeline` and `datasets` open an image with PIL, apply
its EXIF orientation and convert it to RGB (`Image.convert("RGB")`: alpha dropped, palette looked up, grey
replicated, CMYK converted), and processors with `do_convert_rgb` then composite the pixels that a palette or
colour-key transparency marks transparent on white.

Routing ([`torchcodec_decoder`]), measured pixel by pixel against PIL and pinned by the parity tests of
`tests/test_data_path.py`:

- JPEG (grey, RGB or CMYK, EXIF orientation applied): TorchCodec, the same pixels (it converts CMYK with Pillow's
  formula).
- PNG of at most 8 bits per sample without a tRNS chunk (grey, grey + alpha, RGB, RGBA, palette): TorchCodec, the
  same pixels.
- 16-bit PNG: PIL. TorchCodec scales 16-bit samples to 8 bits by 1/257 with rounding, PIL clips 16-bit grey at 255
  and truncates 16-bit colour to the high byte (up to 254 and 1 levels apart).
- PNG with a tRNS chunk (palette or colour-key transparency): PIL, whose `info["transparency"]` the processor's
  compositing on white reads.
- WebP of one frame (lossy or lossless, alpha dropped, EXIF orientation applied): TorchCodec, the same pixels.
- Animated WebP: PIL, which decodes the first frame only; TorchCodec would decode every frame, however many.
- Every other format (GIF, BMP, TIFF, ...): PIL. Only images whose size `pixel_limit.header_checked` read from the
  header reach TorchCodec, which has no pixel limit of its own; PIL checks the others itself. (TorchCodec also gives
  PIL's pixels for a GIF without transparency, but it decodes every frame, and only walking all of a GIF's blocks
  tells how many there are.)

torchvision's decoders, used here before, are deprecated since torchvision 0.29 (a DeprecationWarning at each decode).
"""

import functools
import logging
import re

import datasets
import numpy as np
import PIL.Image
import torch
from transformers.image_transforms import convert_to_rgb

from .pixel_limit import (
    JPEG_SIGNATURE,
    PNG_SIGNATURE,
    WEBP_FIRST_CHUNK,
    RefusedImage,
    header_checked,
    is_webp,
    pil_pixel_limit,
)

try:  # TorchCodec's wheel links the CUDA runtime it was built for; without it (or without TorchCodec) PIL decodes
    from torchcodec.decoders import decode_jpeg, decode_png, decode_webp
except (ImportError, OSError) as error:
    decode_jpeg = decode_png = decode_webp = None
    TORCHCODEC_UNAVAILABLE = f"{type(error).__name__}: {error}"
else:
    TORCHCODEC_UNAVAILABLE = None

logger = logging.getLogger(__name__)
PNG_BIT_DEPTH_OFFSET = 24  # in the IHDR chunk, which always comes first
WEBP_FLAGS_OFFSET, WEBP_ANIMATION_FLAG = 20, 0x02  # the first byte of a VP8X chunk's data
# TorchCodec's errors start with where they were raised: "read_header_and_start, /path/DecodeJpeg.cpp:208, ".
TORCHCODEC_ERROR_LOCATION = re.compile(r"^\w+, \S+:\d+, ")


def image_bytes(value):
    """The encoded bytes of a `datasets.Image(decode=False)` value ({"bytes", "path"}), or None for an image already
    decoded. A value that names a path only is read by `image_paths.ImageFiles` first."""
    return value.get("bytes") if isinstance(value, dict) else None


def decode_rgb(value, flatten_transparency=False):
    """A dataset image (a `datasets.Image(decode=False)` value, or a PIL image) as a uint8 tensor (3, H, W) with the
    pixels of `datasets.Image().decode_example(value).convert("RGB")`, EXIF orientation applied; with
    `flatten_transparency`, transparent palette or colour-key pixels white, as a processor with `do_convert_rgb`
    makes them. Raises [`RefusedImage`] for an image above the pixel limit."""
    data = image_bytes(value)
    decoder = None if data is None else torchcodec_decoder(data)
    if decoder is None:
        return decode_with_pil(value, flatten_transparency)
    return decode_with_torchcodec(decoder, data)


def torchcodec_decoder(data):
    """The TorchCodec decoder that gives PIL's pixels for the encoded image `data` (see the module docstring), or
    None when PIL must decode it. Reads the header only; raises [`RefusedImage`] when it declares more pixels than
    the limit."""
    if not header_checked(data):  # TorchCodec decodes only sizes checked in the header
        return None
    if TORCHCODEC_UNAVAILABLE is not None:
        _warn_torchcodec_unavailable()
        return None
    if data.startswith(JPEG_SIGNATURE):
        return decode_jpeg
    if is_plain_png(data):
        return decode_png
    if is_still_webp(data):
        return decode_webp
    return None


@functools.cache
def _warn_torchcodec_unavailable():
    logger.warning(
        "TorchCodec could not be loaded (%s), so PIL decodes every image: the same pixels, more slowly. Fix: "
        "install the torchcodec build that matches your torch (for a CPU-only torch, the CPU wheel from "
        "https://download.pytorch.org/whl/cpu).",
        TORCHCODEC_UNAVAILABLE,
    )


def is_plain_png(data):
    """A PNG of at most 8 bits per sample without a tRNS chunk (palette or colour-key transparency, which comes
    before the image data)."""
    return (
        data.startswith(PNG_SIGNATURE)
        and data[PNG_BIT_DEPTH_OFFSET] <= 8
        and b"tRNS" not in data[: data.find(b"IDAT")]
    )


def is_still_webp(data):
    """A WebP of one frame: a simple file (its first chunk VP8 or VP8L), or an extended one (VP8X) without the
    animation flag."""
    return is_webp(data) and not (data[WEBP_FIRST_CHUNK] == b"VP8X" and data[WEBP_FLAGS_OFFSET] & WEBP_ANIMATION_FLAG)


def decode_with_torchcodec(decoder, data):
    """`decoder(data)` in RGB, EXIF orientation applied, as a uint8 tensor (3, H, W). A corrupt image raises a
    RuntimeError with TorchCodec's reason, without the C++ source location it starts with."""
    try:
        return decoder(data, mode="RGB")
    except RuntimeError as error:
        raise RuntimeError(TORCHCODEC_ERROR_LOCATION.sub("", str(error))) from None


def decode_with_pil(value, flatten_transparency=False):
    """`decode_rgb` through PIL: any format PIL reads, 16-bit images converted as PIL converts them."""
    if isinstance(value, dict) and value.get("bytes") is None:
        path = value.get("path")
        raise RefusedImage(f"the image value holds no bytes{'' if path is None else ' (read its path first)'}")
    with pil_pixel_limit():
        image = value if isinstance(value, PIL.Image.Image) else datasets.Image().decode_example(value)
    image = image.convert("RGB")
    # transformers' own conversion: white under the pixels that image.info["transparency"] names.
    pixels = convert_to_rgb(image, return_numpy=True) if flatten_transparency else np.array(image)  # (H, W, 3)
    return torch.from_numpy(pixels).permute(2, 0, 1)  # (3, H, W)
