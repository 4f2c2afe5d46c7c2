"""PNG plots shared by the jobs and the report, written through `core.outputs` (local or gs://)."""

import io

import numpy as np

from core.outputs import write_bytes


def save_figure(figure, path):
    """Writes a matplotlib Figure to `path` as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=import-outside-toplevel

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    write_bytes(path, buffer.getvalue())


def plot_confusion_matrix(matrix, class_names, path, title="Confusion matrix"):
    """Writes a PNG heat map of `matrix` (rows: true class, columns: predicted) to `path`."""
    from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel

    matrix = np.asarray(matrix)
    figure = Figure(figsize=(1.0 + 0.55 * len(class_names), 0.8 + 0.5 * len(class_names)))
    ax = figure.add_subplot()
    image = ax.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=ax)
    ticks = range(len(class_names))
    ax.set_xticks(ticks, [str(c) for c in class_names])
    ax.set_yticks(ticks, [str(c) for c in class_names])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    threshold = matrix.max() / 2 if matrix.size else 0
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center", fontsize=7,
                color="white" if value > threshold else "black")
    save_figure(figure, path)


def plot_learning_curves(history, path, best_epoch=None, title="Learning curves"):
    """Writes a PNG of loss and accuracy per epoch, training vs eval, to `path`.

    Args:
      history: Keras `History.history`: lists per metric ("loss", "val_loss", ...).
      path: the PNG to write.
      best_epoch: 0-based epoch whose weights were kept, marked on both panels.
      title: figure title.
    """
    from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel

    figure = Figure(figsize=(10, 4))
    figure.suptitle(title)
    for ax, metric in zip(figure.subplots(1, 2), ("loss", "accuracy")):
        for key, label in ((metric, "train"), (f"val_{metric}", "eval")):
            values = history.get(key)
            if values:
                ax.plot(range(1, len(values) + 1), values, marker="o", markersize=3, label=label)
        if best_epoch is not None:
            ax.axvline(best_epoch + 1, color="grey", linestyle="--", label="kept")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    save_figure(figure, path)
