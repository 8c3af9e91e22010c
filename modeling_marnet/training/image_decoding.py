"""Decoding dataset images into uint8 RGB tensors: torchvision (libjpeg-turbo, libpng) where it gives exactly what
PIL gives, PIL otherwise.

The contract is what the image processor sees at inference: `pipeline` and `datasets` open an image with PIL, apply
its EXIF orientation and convert it to RGB (`Image.convert("RGB")`: alpha dropped, palette looked up, grey
replicated), and processors with `do_convert_rgb` then composite the pixels that a palette or colour-key
transparency marks transparent on white. torchvision's decoders give the same pixels for 8-bit JPEG (grey or colour)
and PNG (any colour type) and are faster; CMYK JPEGs, 16-bit PNGs, PNGs with such transparency and every other
format go through PIL itself. torchvision 0.29 deprecates its decoders in favour of TorchCodec: this module (and
`device_decoding.py`) is the place to port when they go.
"""

import datasets
import numpy as np
import PIL.Image
import torch
from torchvision.io import ImageReadMode, decode_jpeg, decode_png
from transformers.image_transforms import convert_to_rgb

from .pixel_limit import JPEG_SIGNATURE, PNG_SIGNATURE, RefusedImage, header_checked, pil_pixel_limit

PNG_BIT_DEPTH_OFFSET = 24  # in the IHDR chunk, which always comes first


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
    checked = data is not None and header_checked(data)  # torchvision decodes only sizes checked in the header
    if checked and data.startswith(JPEG_SIGNATURE):
        image = decode_jpeg(_byte_tensor(data), ImageReadMode.UNCHANGED, apply_exif_orientation=True)  # (C, H, W)
        if image.shape[0] == 3:
            return image
        if image.shape[0] == 1:
            return image.expand(3, -1, -1)
        # CMYK: PIL's conversion to RGB is the contract.
    elif checked and is_plain_png(data):
        return decode_png(_byte_tensor(data), ImageReadMode.RGB, apply_exif_orientation=True)
    return decode_with_pil(value, flatten_transparency)


def is_plain_png(data):
    """A PNG of at most 8 bits per sample without a tRNS chunk (palette or colour-key transparency, which comes
    before the image data)."""
    return (
        data.startswith(PNG_SIGNATURE)
        and data[PNG_BIT_DEPTH_OFFSET] <= 8
        and b"tRNS" not in data[: data.find(b"IDAT")]
    )


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


def _byte_tensor(data):
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)  # (N,), writable copy of the bytes
