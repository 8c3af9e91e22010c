"""`--gpu_decode`: JPEGs decoded with nvJPEG on the training process's GPU instead of by the CPU workers.

The workers then only read the encoded bytes ([`deferred_image`]); the training step decodes the batch with one
batched TorchCodec `decode_jpeg(..., device="cuda")` and runs each image's preprocessing (augmentation, the
processor's resize and crop) there ([`DeviceDecoding`]). What nvJPEG might decode differently from the CPU path is
still decoded by the workers: other formats, CMYK JPEGs, and EXIF-rotated JPEGs (TorchCodec rotates on CUDA too, but
with its own EXIF reader, which stops at bytes between segments that libjpeg skips; not measured on a GPU).

Outputs follow the CPU path up to rounding: nvJPEG's IDCT and the GPU's float resampling (torchvision resizes uint8
on CUDA in float) may differ from libjpeg-turbo and the CPU's uint8 kernels by about one 8-bit level, and the
augmentation policies run on tensors there instead of PIL images. Not measured: the machines this was written on
have no GPU (BENCHMARKS.md gives the command to measure it).
"""

import io

import numpy as np
import PIL.Image
import torch

from marnet_cli.errors import CLIError

from . import image_decoding
from .image_decoding import JPEG_SIGNATURE, image_bytes
from .pixel_limit import header_checked
from .pixels import splits_into_steps

EXIF_ORIENTATION = 0x0112


def check_gpu_decode(device, image_processor):
    """Raises unless `--gpu_decode` can work: a CUDA device and a processor whose resize and crop run on tensors."""
    if device.type != "cuda":
        raise CLIError(
            f"--gpu_decode decodes JPEGs with nvJPEG on the training process's CUDA GPU, but this run's device is "
            f"{device} (torch.cuda.is_available() is {torch.cuda.is_available()}). Drop --gpu_decode: the DataLoader "
            "workers then decode on CPU."
        )
    if image_decoding.TORCHCODEC_UNAVAILABLE is not None:
        raise CLIError(
            "--gpu_decode decodes with TorchCodec's nvJPEG, which could not be loaded "
            f"({image_decoding.TORCHCODEC_UNAVAILABLE}). "
            "Install the torchcodec build that matches your torch and CUDA, or drop --gpu_decode."
        )
    if not splits_into_steps(image_processor):
        raise CLIError(
            f"--gpu_decode runs the image processor's resize and crop on the GPU, which needs a transformers "
            f"torchvision processor with the standard steps and no padding; {type(image_processor).__name__} is "
            "not one. Drop --gpu_decode."
        )


def gpu_decodable(data):
    """Whether nvJPEG gives the CPU path's pixels for these bytes: a grey or colour JPEG without EXIF rotation.
    Reads the header only."""
    if not data.startswith(JPEG_SIGNATURE):
        return False
    with PIL.Image.open(io.BytesIO(data)) as image:
        return image.mode in ("L", "RGB") and image.getexif().get(EXIF_ORIENTATION, 1) == 1


def deferred_image(value, decode):
    """In a worker: the encoded JPEG as a uint8 array (N,) when the GPU can decode it, else `decode(value)`, the
    image decoded on CPU as a uint8 tensor (3, H, W). Arrays stay on the CPU when Accelerate moves the batch to the
    device, as `decode_jpeg` wants its input. An image above the pixel limit is refused here, before any decoder
    sees it (`pixel_limit.RefusedImage`)."""
    data = image_bytes(value)
    if data is not None and header_checked(data) and gpu_decodable(data):
        return np.frombuffer(bytearray(data), dtype=np.uint8)
    return decode(value)


class DeviceDecoding:
    """A batch with deferred `images` (see [`deferred_image`]) and their `rows` -> the batch with uint8
    `pixel_values` (B, 3, h, w) on `device`: the JPEGs decoded there in one call, then every image preprocessed as the
    workers would have done it, `preprocessing(image, row)`."""

    def __init__(self, preprocessing, device):
        self.preprocessing = preprocessing
        self.device = torch.device(device)

    def __call__(self, batch):
        images = list(batch["images"])
        encoded = [position for position, image in enumerate(images) if isinstance(image, np.ndarray)]
        if encoded:
            decoded = image_decoding.decode_jpeg(
                [torch.from_numpy(images[position]) for position in encoded], mode="RGB", device=self.device
            )
            for position, image in zip(encoded, decoded):
                images[position] = image  # (3, H, W)
        pixel_values = torch.stack(
            [self.preprocessing(image.to(self.device), row) for image, row in zip(images, batch["rows"])]
        )  # (B, 3, h, w)
        rest = {key: value for key, value in batch.items() if key not in ("images", "rows")}
        return {**rest, "pixel_values": pixel_values}
