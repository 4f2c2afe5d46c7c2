"""Training plumbing shared by the trainers: parameter budget, classification metrics, plots.

Plots use matplotlib's object API on the Agg canvas (no pyplot, no display), and every
writer goes through Beam's `FileSystems`, so outputs may live on gs://.
"""

import io
import json
import math

import numpy as np
from apache_beam.io.filesystems import FileSystems

# The rule of thumb: about ten training examples per trainable parameter.
EXAMPLES_PER_PARAMETER_RULE = 10.0


def count_params(model):
    """Number of scalar weights of a built Keras model (trainable or not)."""
    return int(sum(math.prod(w.shape) for w in model.weights))


def parameter_budget(num_params, num_examples, rule=EXAMPLES_PER_PARAMETER_RULE):
    """What the data can support: the report printed before training.

    Args:
      num_params: the model's parameter count.
      num_examples: training examples.
      rule: training examples wanted per parameter.

    Returns:
      (examples per parameter, report line, warning line or None when the rule is met).
    """
    ratio = num_examples / num_params if num_params else math.inf
    line = (f"{num_params:,} parameters, {num_examples:,} training examples: "
            f"{ratio:.3g} examples per parameter")
    warning = None
    if ratio < rule:
        warning = (f"only {ratio:.3g} training examples per parameter, below the rule of thumb "
                   f"of {rule:g} (the data supports about {int(num_examples / rule):,} "
                   "parameters): expect overfitting, watch the train/eval accuracy gap, and "
                   "prefer a smaller model or more data")
    return ratio, line, warning


def classification_metrics(labels, predicted, num_classes):
    """Accuracy, per-class precision and recall, confusion matrix.

    Args:
      labels: int array of true classes.
      predicted: int array of predicted classes, same length.
      num_classes: classes are 0 .. num_classes - 1.

    Returns:
      dict, JSON-ready. `confusion_matrix[i][j]` counts examples of class i predicted as
      j. A precision (recall) is None where the class is never predicted (never present).
    """
    labels, predicted = np.asarray(labels, np.int64), np.asarray(predicted, np.int64)
    if labels.shape != predicted.shape:
        raise ValueError(f"{labels.shape[0]} labels but {predicted.shape[0]} predictions")
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    correct = np.diag(matrix)
    predicted_per_class, actual_per_class = matrix.sum(axis=0), matrix.sum(axis=1)

    def ratio(num, den):
        return [float(n / d) if d else None for n, d in zip(num, den)]

    return {
        "examples": int(labels.size),
        "accuracy": float(correct.sum() / labels.size) if labels.size else None,
        "precision": ratio(correct, predicted_per_class),
        "recall": ratio(correct, actual_per_class),
        "support": actual_per_class.tolist(),
        "confusion_matrix": matrix.tolist(),
    }


def write_bytes(path, data):
    with FileSystems.create(path) as f:
        f.write(data)


def write_json(path, obj):
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def _save_figure(figure, path):
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
    _save_figure(figure, path)


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
    _save_figure(figure, path)
