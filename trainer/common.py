"""Training plumbing shared by the trainers: parameter budget, classification metrics, plots.

Plots use matplotlib's object API on the Agg canvas (no pyplot, no display), and every
writer goes through Beam's `FileSystems`, so outputs may live on gs://.
"""

import math

import numpy as np

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


