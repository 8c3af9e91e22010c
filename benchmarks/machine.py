"""What a benchmark JSON records of the machine a measurement ran on (timings mean little without it)."""

import os
import platform

import torch


def machine_record():
    """Platform, processor, torch's thread count and the load average (1, 5, 15 min) at the time of the call."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
    }
