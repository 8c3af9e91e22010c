"""Console scripts `marnet-train`, `marnet-eval` and `marnet-export`: options are parsed (and refused) before torch is
imported."""

import logging

from .errors import command
from .eval_args import parse_eval_args
from .export_args import parse_export_args
from .train_args import parse_train_args


@command("marnet-train")
def train(argv=None):
    """Console script `marnet-train`; also `python -m modeling_marnet.train` and `accelerate launch -m ...`."""
    args = parse_train_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    from modeling_marnet.train import run

    run(args)


@command("marnet-eval")
def evaluate(argv=None):
    """Console script `marnet-eval`; also `python -m modeling_marnet.evaluate` and `accelerate launch -m ...`."""
    args = parse_eval_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    from modeling_marnet.evaluate import run

    run(args)


@command("marnet-export")
def export(argv=None):
    """Console script `marnet-export`; also `python -m modeling_marnet.export_onnx`."""
    args = parse_export_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    from modeling_marnet.export_onnx import run

    run(args)
