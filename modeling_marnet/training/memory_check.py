"""Refusing a model that cannot fit in memory before any of it is allocated.

A config file is data: a tower config with hidden size 65536 and 48 layers would make `from_pretrained` allocate
terabytes before failing. So the parameters a config implies are counted first on PyTorch's meta device (shapes
only, no memory) and compared with the memory this machine has available.
"""

import os

import torch
from transformers import AutoModelForImageClassification

from marnet_cli.errors import CLIError

BYTES_PER_PARAMETER = 4  # float32 weights, as `from_pretrained` and MARNet's constructor first build them


def parameter_count(config):
    """The number of parameters of the image classifier `config` describes, counted without allocating them."""
    with torch.device("meta"):
        model = AutoModelForImageClassification.from_config(config)
    return sum(parameter.numel() for parameter in model.parameters())


def available_memory():
    """Bytes of memory this process may still use: the kernel's MemAvailable (Linux), else the physical memory."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_model_fits(config, source):
    """A [`CLIError`] naming `source` (the option and path that gave `config`) when the model's float32 weights alone
    would not fit in the available memory."""
    count = parameter_count(config)
    needed, available = count * BYTES_PER_PARAMETER, available_memory()
    if needed > available:
        raise CLIError(
            f"{source}: its config describes a model of {count:,} parameters, {needed / 2**30:,.1f} GiB of float32 "
            f"weights, more than the {available / 2**30:,.1f} GiB of memory available. Check the config's sizes "
            "(hidden size, layers, widths)."
        )
