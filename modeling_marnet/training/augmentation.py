"""Training-time image augmentation: named presets (`--augment`) and colour jitter (`--color_jitter`), on uint8
image tensors (3, H, W), before the image processor's resize, crop and normalisation.

The presets follow timm's training recipes: `crop_flip` is a random resized crop (scale 0.5-1) and a horizontal
flip; `randaugment` (2 ops, magnitude 9), `trivialaugment` and `autoaugment` (the ImageNet policy) add that policy
after the crop and flip.
"""

import torch
from torchvision.transforms import v2 as transforms
from torchvision.transforms.v2 import functional as F

POLICIES = {
    "crop_flip": None,
    "randaugment": lambda: transforms.RandAugment(num_ops=2, magnitude=9),
    "trivialaugment": transforms.TrivialAugmentWide,
    "autoaugment": lambda: transforms.AutoAugment(transforms.AutoAugmentPolicy.IMAGENET),
}


def augmentation_transforms(image_size, preset, color_jitter=0.0):
    """The transforms of `preset` (`none` or a key of `POLICIES`) and colour jitter: the geometric ones on the
    tensor, then the policy and the jitter as [`PhotometricSteps`]."""
    steps, photometric = [], []
    if preset != "none":
        steps += [RandomResizedCrop(image_size, scale=(0.5, 1.0)), transforms.RandomHorizontalFlip()]
        if POLICIES[preset] is not None:
            photometric.append(POLICIES[preset]())
    if color_jitter > 0:
        photometric.append(
            transforms.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter)
        )
    if photometric:
        steps.append(PhotometricSteps(photometric))
    return steps


class RandomResizedCrop(transforms.RandomResizedCrop):
    """torchvision's random resized crop, with the crop packed channels-last before the resize. Decoded images are
    laid out channels-last, and a crop of one is a strided view; torch's fast uint8 antialiased resampling wants a
    packed channels-last input and otherwise takes a path about three times slower. Same pixels either way."""

    def transform(self, inpt, params):
        crop = F.crop(inpt, params["top"], params["left"], params["height"], params["width"])  # (3, h, w) view
        packed = crop.permute(1, 2, 0).contiguous().permute(2, 0, 1)  # (3, h, w), channels-last in memory
        return F.resize(packed, self.size, self.interpolation, antialias=self.antialias)


class PhotometricSteps:
    """The policy and colour jitter, uint8 image tensor in and out. On CPU they run on a PIL image: torchvision's
    PIL kernels for them (affine warps, enhancements) are several times faster than its uint8 tensor kernels, which
    compute in float (RandAugment at 224 px, per image on one core: 0.6-1.2 ms against 1.8-2.8 ms), while the
    crop and resize before them are faster on tensors. On a GPU (`--gpu_decode`) they run on the tensor."""

    def __init__(self, steps):
        self.transforms = transforms.Compose(steps)

    def __call__(self, image):
        if image.device.type != "cpu":
            return self.transforms(image)
        return F.pil_to_tensor(self.transforms(F.to_pil_image(image)))

    def __repr__(self):
        return f"{type(self).__name__}({self.transforms})"


class RandomAugmentation:
    """Random augmentation whose randomness depends on (seed, epoch, row) alone, not on the global RNG: resumed,
    multi-process and multi-worker runs augment each row identically, and the prefetching of batches cannot shift
    the random numbers the model draws. The epoch lives in shared memory, so that `set_epoch` in the training
    process reaches persistent DataLoader workers too."""

    def __init__(self, steps, seed):
        self.transforms = transforms.Compose(steps)
        self.seed = seed
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @classmethod
    def from_options(cls, image_size, preset, color_jitter, seed):
        """The augmentation of `--augment preset --color_jitter x`, or None when both leave images unchanged."""
        steps = augmentation_transforms(image_size, preset, color_jitter)
        return cls(steps, seed) if steps else None

    @property
    def epoch(self):
        return int(self._epoch)

    def set_epoch(self, epoch):
        self._epoch.fill_(epoch)

    def __call__(self, image, index):
        """uint8 image (3, H, W) of row `index` -> augmented uint8 image (3, h, w)."""
        with torch.random.fork_rng(devices=[]):
            # The CPU generator only: torch.manual_seed also queues a seed for every lazily initialised accelerator
            # backend, with a stack trace each, about 0.5 ms per image. The transforms draw their parameters on CPU.
            torch.default_generator.manual_seed(hash((self.seed, self.epoch, index)) % 2**63)
            return self.transforms(image)
