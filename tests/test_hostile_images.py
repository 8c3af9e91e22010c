"""Hostile image values in a dataset: paths that name what is not the dataset's own image file, and decompression
bombs. Each test performs the attack under bounds (`bounded.py`), so a regression fails it instead of exhausting the
machine or hanging."""

import io
import os
import struct
import zlib
from types import SimpleNamespace

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
from transformers import ViTImageProcessor

from bounded import memory_limit, time_limit
from marnet_cli.errors import CLIError
from modeling_marnet.training.batches import ImagePreprocessing, ImageTextExamples
from modeling_marnet.training.data import load_splits
from modeling_marnet.training.image_decoding import decode_rgb
from modeling_marnet.training.image_paths import MAX_IMAGE_FILE_BYTES, ImageFiles, dataset_folders
from modeling_marnet.training.pixel_limit import RefusedImage, webp_size
from train_fixtures import save_dataset


def encode(image, image_format, **options):
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


SMALL_PNG = encode(PIL.Image.new("RGB", (12, 10), (200, 30, 30)), "PNG")


def split_of(images):
    """A split whose image column holds `images` ({"bytes", "path"} values), as `datasets` stores them."""
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    return datasets.Dataset.from_dict({"image": images, "label": [0] * len(images)}, features=features)


def examples_of(images, folders=(), defer_decoding=False):
    preprocessing = ImagePreprocessing(ViTImageProcessor(size={"height": 8, "width": 8}))
    return ImageTextExamples(
        split_of(images),
        "image",
        "label",
        preprocessing,
        defer_decoding=defer_decoding,
        split="train",
        image_folders=folders,
    )


@pytest.fixture
def dataset_folder(tmp_path):
    """A dataset folder holding one image; next to it, outside, a private file that is a valid image too."""
    folder = tmp_path / "dataset"
    folder.mkdir()
    (folder / "inside.png").write_bytes(SMALL_PNG)
    (tmp_path / "private.png").write_bytes(SMALL_PNG)
    return folder


def test_paths_inside_the_dataset_folder_are_read(dataset_folder):
    (dataset_folder / "link.png").symlink_to(dataset_folder / "inside.png")  # a link that stays inside is fine
    paths = [str(dataset_folder / "inside.png"), str(dataset_folder / "link.png")]
    examples = examples_of([{"bytes": None, "path": path} for path in paths], folders=[dataset_folder])
    expected = examples_of([{"bytes": SMALL_PNG, "path": None}])[0]["pixel_values"]
    for row in range(2):
        assert torch.equal(examples[row]["pixel_values"], expected)


ATTACKS = {
    # name: (make the path in the dataset folder's parent `root`, words of the refusal)
    "device": (lambda root: "/dev/zero", "lies outside the dataset's folders"),
    "link to a device": (lambda root: _link(root, "zero.png", "/dev/zero"), "(really /dev/zero) lies outside"),
    "private file": (lambda root: str(root / "private.png"), "lies outside the dataset's folders"),
    "link to a private file": (lambda root: _link(root, "cat.png", root / "private.png"), "private.png) lies outside"),
    "dot-dot": (lambda root: str(root / "dataset" / ".." / "private.png"), "lies outside the dataset's folders"),
    "FIFO": (lambda root: _fifo(root / "dataset" / "pipe.png"), "names a FIFO, not a regular file"),
    "folder": (lambda root: str(root / "dataset"), "names a folder, not a regular file"),
    "URL": (lambda root: f"file://{root / 'private.png'}", "URLs in a dataset are not fetched"),
    "oversized": (lambda root: _sparse(root / "dataset" / "huge.png"), "larger than the 256 MiB read for one image"),
}


def _link(root, name, target):
    (root / "dataset" / name).symlink_to(target)
    return str(root / "dataset" / name)


def _fifo(path):
    os.mkfifo(path)
    return str(path)


def _sparse(path):
    with open(path, "wb") as file:
        file.truncate(MAX_IMAGE_FILE_BYTES + 1)  # no disk space used: a regression would read 256 MiB of zeros
    return str(path)


@pytest.mark.parametrize("attack", ATTACKS)
def test_dataset_paths_to_anything_but_the_datasets_own_image_files_are_refused(dataset_folder, attack):
    make_path, words = ATTACKS[attack]
    path = make_path(dataset_folder.parent)
    examples = examples_of([{"bytes": SMALL_PNG, "path": None}, {"bytes": None, "path": path}], [dataset_folder])
    with memory_limit(), time_limit(), pytest.raises(CLIError) as refused:
        examples[1]
    assert str(refused.value).startswith(f"Split 'train', row 1 ({path}): ")
    assert words in str(refused.value)


def test_files_that_datasets_downloaded_or_extracted_are_read(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "EXTRACTED_DATASETS_PATH", tmp_path / "extracted")
    (tmp_path / "extracted" / "archive").mkdir(parents=True)
    (tmp_path / "extracted" / "archive" / "dish.png").write_bytes(SMALL_PNG)
    assert ImageFiles().read(str(tmp_path / "extracted" / "archive" / "dish.png")) == SMALL_PNG


def test_devices_are_refused_even_in_an_allowed_folder():
    with memory_limit(), pytest.raises(RefusedImage, match="names a character device, not a regular file"):
        ImageFiles(folders=["/dev"]).read("/dev/zero")


def test_a_run_reads_image_paths_from_its_local_dataset_folder_only(tmp_path):
    dataset = save_dataset(tmp_path / "dataset", parquet=True)
    args = SimpleNamespace(
        dataset=str(dataset), train_split="train", validation_split="validation", test_split="test",
        train_val_split=None, eval_strategy="epoch", image_column="image", label_column="label",
        max_train_samples=None, max_eval_samples=None, seed=0,
        train_dir=None, validation_dir=None, dataset_config_name=None,
    )  # fmt: skip
    assert load_splits(args).image_folders == (dataset,)
    assert dataset_folders(dataset / "train.parquet") == (dataset,)
    assert dataset_folders("org/hub-dataset") == ()  # then only what `datasets` downloaded or extracted


def png_declaring(width, height):
    """A valid 1-bit grey PNG of width x height black pixels: 49 KB for 20000 x 20000 (1.2 GB decoded as RGB)."""
    compressor, row = zlib.compressobj(9), bytes(1 + (width + 7) // 8)  # filter byte, then the packed pixels
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def jpeg_declaring(width, height, extra_small_frame=False, garbage=False):
    """A small JPEG whose frame header is patched to declare width x height (optionally after a first, small frame
    header, or after bytes that libjpeg skips)."""
    data = encode(PIL.Image.new("RGB", (16, 16), (10, 200, 10)), "JPEG")
    frame = data.index(b"\xff\xc0")
    length = int.from_bytes(data[frame + 2 : frame + 4], "big")
    segment = bytearray(data[frame : frame + 2 + length])
    small = bytes(segment)
    segment[5:9] = struct.pack(">HH", height, width)
    prefix = (small if extra_small_frame else b"") + (b"\x00\x00junk" if garbage else b"")
    return data[:frame] + prefix + bytes(segment) + data[frame + 2 + length :]


UPRIGHT_EXIF = PIL.Image.Exif()
UPRIGHT_EXIF[0x0112] = 1  # orientation: as stored
# Pillow's options for each kind of WebP, by the first chunk it writes (an EXIF chunk makes it write the extended one).
WEBP_KINDS = {"VP8 (lossy)": {}, "VP8L (lossless)": {"lossless": True}, "VP8X (extended)": {"exif": UPRIGHT_EXIF}}


def webp_declaring(width, height):
    """A small extended (VP8X) WebP whose canvas is patched to width x height."""
    image = PIL.Image.new("RGB", (16, 16), (10, 10, 200))
    data = bytearray(encode(image, "WEBP", **WEBP_KINDS["VP8X (extended)"]))
    assert data[12:16] == b"VP8X"
    data[24:30] = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return bytes(data)


@pytest.fixture(scope="module")
def png_bomb():
    return png_declaring(20000, 20000)


BOMBS = {
    "PNG": lambda png_bomb: png_bomb,
    "JPEG": lambda png_bomb: jpeg_declaring(20000, 20000),
    "JPEG, second frame header": lambda png_bomb: jpeg_declaring(20000, 20000, extra_small_frame=True),
    "JPEG, bytes before the marker": lambda png_bomb: jpeg_declaring(20000, 20000, garbage=True),
    "WebP": lambda png_bomb: webp_declaring(20000, 20000),
}


@pytest.mark.parametrize("bomb", BOMBS)
@pytest.mark.parametrize("defer_decoding", [False, True], ids=["cpu decode", "gpu_decode path"])
def test_decompression_bombs_are_refused_before_decoding(png_bomb, bomb, defer_decoding):
    data = BOMBS[bomb](png_bomb)
    assert len(data) < 60_000
    examples = examples_of([{"bytes": data, "path": None}], defer_decoding=defer_decoding)
    with memory_limit(), pytest.raises(CLIError) as refused:
        examples[0]
    message = str(refused.value)
    assert message.startswith("Split 'train', row 0: its header declares 20000x20000 = 400,000,000 pixels")
    assert "more than PIL.Image.MAX_IMAGE_PIXELS (89,478,485)" in message


@pytest.mark.parametrize("kind", WEBP_KINDS)
def test_webp_sizes_are_read_from_each_kind_of_first_chunk(kind):
    """The size checked against the limit is the one libwebp decodes, whichever chunk holds it."""
    data = encode(PIL.Image.new("RGB", (40, 30), (0, 0, 250)), "WEBP", **WEBP_KINDS[kind])
    assert data[12:16] == kind.split()[0].ljust(4).encode()
    assert webp_size(data) == (40, 30)


@pytest.mark.parametrize("image_format", ["PNG", "JPEG", "WEBP", "BMP", "GIF"])
def test_the_limit_is_pils_own_setting_for_every_format(monkeypatch, image_format):
    """Between one and two times the limit PIL itself only warns; the data path refuses. Raising the limit (None:
    none) lets the image through, as in PIL."""
    data = encode(PIL.Image.new("RGB", (40, 40), (0, 0, 250)), image_format)  # 1600 pixels
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(RefusedImage, match=r"MAX_IMAGE_PIXELS \(1,000\)"):
        decode_rgb({"bytes": data, "path": None})
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", None)
    assert decode_rgb({"bytes": data, "path": None}).shape == (3, 40, 40)
    assert np.asarray(PIL.Image.open(io.BytesIO(data))).shape[:2] == (40, 40)
