"""The benchmarks' plots: matplotlib without a display, each figure written all at once (never half a PNG)."""

from pathlib import Path

from marnet_cli.files import atomic_path


def pyplot():
    """matplotlib's `pyplot`, on the headless Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path, dpi):
    """Writes `figure` to `path` at `dpi` dots per inch, all at once, and closes it. The format is the suffix's
    (`.png`, `.svg`, `.pdf`, ...)."""
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format=Path(path).suffix.lstrip(".") or None, dpi=dpi)
    pyplot().close(figure)
