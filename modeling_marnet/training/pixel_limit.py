"""The decompression-bomb check in front of every image decoder of the data path: an image whose header declares
more pixels than `PIL.Image.MAX_IMAGE_PIXELS` (PIL's own limit, 89,478,485 by default; `None` turns it off, as in
PIL) is refused before a pixel is decoded.

A 49 KB PNG can declare 20000 x 20000 pixels, which TorchCodec's `decode_png` / `decode_jpeg` (CPU or nvJPEG) would
decode into a 1.2 GB tensor: they have no limit of their own. So the sizes of PNGs, JPEGs and WebPs are read here
from their headers (the IHDR chunk, every JPEG frame header before the first scan, WebP's first chunk) before
TorchCodec sees them; an image whose size cannot be read that way goes to PIL, whose check is made strict (PIL only
warns between one and two times the limit).
"""

import contextlib
import struct
import warnings

import PIL.Image


class RefusedImage(ValueError):
    """An image value the data path refuses to read or decode; the message says why and what to do."""


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_HEADER_BYTES = 33  # signature, then the IHDR chunk: length, type, 13 bytes of data, CRC
JPEG_SIGNATURE = b"\xff\xd8\xff"
# JPEG frame headers (SOF0-SOF15) hold the image size; 0xC4 (DHT), 0xC8 (JPG) and 0xCC (DAC) share their range.
JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
JPEG_STANDALONE_MARKERS = frozenset([0x01, *range(0xD0, 0xD8)])  # TEM, RST0-7: no length field
JPEG_START_OF_SCAN, JPEG_END_OF_IMAGE = 0xDA, 0xD9
WEBP_FIRST_CHUNK = slice(12, 16)  # after "RIFF", the file size and "WEBP"; its data starts at byte 20


def png_size(data):
    """(width, height) of a PNG's IHDR chunk, which must come first; None when it does not."""
    if len(data) < PNG_HEADER_BYTES or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def jpeg_size(data):
    """(width, height) of a JPEG: the largest frame header before the first scan, read as libjpeg reads markers
    (bytes other than 0xFF between segments are skipped); None when there is none."""
    sizes, position = [], 2
    while position + 4 <= len(data):
        if data[position] != 0xFF or data[position + 1] == 0xFF:  # garbage or fill bytes before a marker
            position += 1
            continue
        marker = data[position + 1]
        if marker in JPEG_STANDALONE_MARKERS:
            position += 2
            continue
        if marker in (JPEG_START_OF_SCAN, JPEG_END_OF_IMAGE):
            break
        if marker in JPEG_FRAME_MARKERS and position + 9 <= len(data):
            height, width = struct.unpack(">HH", data[position + 5 : position + 9])
            sizes.append((width, height))
        position += 2 + int.from_bytes(data[position + 2 : position + 4], "big")
    return max(sizes, key=lambda size: size[0] * size[1], default=None)


def is_webp(data):
    """Whether `data` starts as a WebP file does (a RIFF container of form type WEBP)."""
    return data[:4] == b"RIFF" and data[8:12] == b"WEBP"


def webp_size(data):
    """(width, height) of a WebP from its first chunk, as libwebp reads it: the canvas of an extended file (VP8X,
    which libwebp requires a still image's bitstream to match), else the lossy (VP8) or lossless (VP8L) bitstream's
    header; None when that chunk is none of these or cut short."""
    chunk = data[WEBP_FIRST_CHUNK]
    if chunk == b"VP8X" and len(data) >= 30:  # flags (4 bytes), then width - 1 and height - 1 (24 bits each)
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if chunk == b"VP8 " and len(data) >= 30:  # frame tag (3 bytes), start code (3), then 14-bit width and height
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25:  # signature byte, then width - 1 and height - 1 (14 bits each)
        bits = int.from_bytes(data[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + (bits >> 14 & 0x3FFF)
    return None


def check_pixel_count(width, height):
    """A [`RefusedImage`] when width x height is above `PIL.Image.MAX_IMAGE_PIXELS` (read at each call, so a
    limit raised in Python applies)."""
    limit = PIL.Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        raise RefusedImage(
            f"its header declares {width}x{height} = {width * height:,} pixels, more than PIL.Image.MAX_IMAGE_PIXELS "
            f"({limit:,}): a decompression bomb, or an image far larger than training needs. Remove that row or "
            "shrink the image; to accept such images, raise PIL.Image.MAX_IMAGE_PIXELS in Python before training"
        )


def header_checked(data):
    """Whether the encoded image `data` is a PNG, JPEG or WebP whose header size is within the limit (then TorchCodec
    may decode it); False when its size is not in such a header (PIL must decode it, see [`pil_pixel_limit`]).
    Raises [`RefusedImage`] above the limit."""
    if data.startswith(PNG_SIGNATURE):
        size = png_size(data)
    elif data.startswith(JPEG_SIGNATURE):
        size = jpeg_size(data)
    elif is_webp(data):
        size = webp_size(data)
    else:
        size = None
    if size is None:
        return False
    check_pixel_count(*size)
    return True


@contextlib.contextmanager
def pil_pixel_limit():
    """Within the block, PIL refuses images above `PIL.Image.MAX_IMAGE_PIXELS` with a [`RefusedImage`] (PIL alone
    warns up to twice the limit and decodes)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
        try:
            yield
        except (PIL.Image.DecompressionBombWarning, PIL.Image.DecompressionBombError) as error:
            raise RefusedImage(
                f"it has more pixels than PIL.Image.MAX_IMAGE_PIXELS ({PIL.Image.MAX_IMAGE_PIXELS:,}) allows "
                f"({error}). Remove that row or shrink the image; to accept such images, raise "
                "PIL.Image.MAX_IMAGE_PIXELS in Python before training"
            ) from None
