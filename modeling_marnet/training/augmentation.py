"""Training-time image augmentation: named presets (`--augment`) and colour jitter (`--color_jitter`).

The presets follow timm's training recipes on PIL images, before the image processor resizes and normalises them:
`crop_flip` is a random resized crop (scale 0.5-1) and a horizontal flip; `randaugment` (2 ops, magnitude 9),
`trivialaugment` and `autoaugment` (the ImageNet policy) add that policy after the crop and flip.
"""

import torch
from torchvision.transforms import v2 as transforms

POLICIES = {
    "crop_flip": None,
    "randaugment": lambda: transforms.RandAugment(num_ops=2, magnitude=9),
    "trivialaugment": transforms.TrivialAugmentWide,
    "autoaugment": lambda: transforms.AutoAugment(transforms.AutoAugmentPolicy.IMAGENET),
}


def augmentation_transforms(image_size, preset, color_jitter=0.0):
    """The list of PIL -> PIL transforms of `preset` (`none` or a key of `POLICIES`) and colour jitter."""
    steps = []
    if preset != "none":
        steps += [transforms.RandomResizedCrop(image_size, scale=(0.5, 1.0)), transforms.RandomHorizontalFlip()]
        if POLICIES[preset] is not None:
            steps.append(POLICIES[preset]())
    if color_jitter > 0:
        steps.append(transforms.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter))
    return steps


class RandomAugmentation:
    """Random augmentation whose randomness depends on (seed, epoch, row) alone, not on the global RNG: resumed,
    multi-process and multi-worker runs augment each row identically, and the prefetching of batches cannot shift
    the random numbers the model draws."""

    def __init__(self, steps, seed):
        self.transforms = transforms.Compose(steps)
        self.seed = seed
        self.epoch = 0

    @classmethod
    def from_options(cls, image_size, preset, color_jitter, seed):
        """The augmentation of `--augment preset --color_jitter x`, or None when both leave images unchanged."""
        steps = augmentation_transforms(image_size, preset, color_jitter)
        return cls(steps, seed) if steps else None

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __call__(self, image, index):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hash((self.seed, self.epoch, index)) % 2**63)
            return self.transforms(image)
