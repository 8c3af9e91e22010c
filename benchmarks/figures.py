"""The benchmarks' plots: matplotlib without a display, each figure written all at once (never half a PNG)."""

from marnet_cli.files import atomic_path


def pyplot():
    """matplotlib's `pyplot`, on the headless Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path, dpi):
    """Writes `figure` to `path` as a PNG of `dpi` dots per inch, all at once, and closes it."""
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=dpi)
    pyplot().close(figure)
