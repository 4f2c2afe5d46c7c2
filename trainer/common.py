"""Training plumbing shared by the trainers: parameter budget, class checks, classification metrics.

The plots are in `core/plots.py`.
"""

import logging
import math

import numpy as np

# The rule of thumb: about ten training examples per trainable parameter.
EXAMPLES_PER_PARAMETER_RULE = 10.0
# A class is rare when it holds less than this share of what an even split would give
# it: under 10% of a two-class set, under 2% of a ten-class one.
RARE_CLASS_SHARE = 0.2


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


def check_classes(counts, class_names, where, *, named_by, required=True):
    """Refuses (or warns of) a set of examples without every class; warns of a rare class.

    A model trained without a class never predicts it, and one scored without a class
    can score as perfect (always answering the one class there is), so a missing class
    is an error wherever `required`.

    Args:
      counts: examples per class, in class-index order.
      class_names: the names of the classes, same order.
      where: what the examples are, for messages: "the train split".
      named_by: what names the classes, for messages: "--labels neg,pos".
      required: a missing class is an error (else a warning).

    Raises:
      ValueError: naming `where`, the count of every class and `named_by`.
    """
    total = int(sum(counts))
    per_class = ", ".join(f"{name} {int(n):,}" for name, n in zip(class_names, counts))
    missing = [str(name) for name, n in zip(class_names, counts) if n == 0]
    if missing and required:
        raise ValueError(
            f"{where} holds no example of class {', '.join(missing)} (per class: {per_class}; "
            f"classes from {named_by}): training and evaluation need every class, or a model "
            "that answers one class scores as perfect. Check the labels of the input (and the "
            "skipped counts), or name only the classes the data holds.")
    share = RARE_CLASS_SHARE / len(class_names)
    rare = [str(name) for name, n in zip(class_names, counts) if n < share * total]
    if rare:
        logging.warning("%s is imbalanced: class %s holds less than %.3g%% of its %d examples "
                        "(per class: %s); accuracy then mostly measures the other classes, "
                        "watch per-class recall", where, ", ".join(rare), 100 * share, total,
                        per_class)


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


