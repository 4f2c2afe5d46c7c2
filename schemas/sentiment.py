"""The sentiment job's feature spec and artifact names.

The contract itself (what each file holds) is documented in `jobs/sentiment.py`.
"""

import tensorflow as tf

# Splits and their example files, shared with the other example jobs; re-exported here.
# `eval` exists only with --eval-input; folds and hash-chosen eval sets come from `train`.
from schemas.examples import (  # noqa: F401  pylint: disable=unused-import
    EVAL, EXAMPLES_COMPRESSION, EXAMPLES_DIR, EXAMPLES_SUFFIX, SPLITS, TRAIN)

# One example: the token ids of one text, as the corpus job's transform_fn gives them
# (OOV tokens are the corpus's OOV id, vocab_size), its class index, and a 63-bit key
# from the sha256 of the text (folds and splits are drawn from it, so identical texts
# always fall on the same side).
TOKEN_IDS_KEY = "token_ids"
LABEL_KEY = "label"
TEXT_KEY_HASH = "text_hash"
FEATURE_SPEC = {
    TOKEN_IDS_KEY: tf.io.VarLenFeature(tf.int64),
    LABEL_KEY: tf.io.FixedLenFeature([], tf.int64),
    TEXT_KEY_HASH: tf.io.FixedLenFeature([], tf.int64),
}

# Default class names, in class-index order.
DEFAULT_LABELS = ("neg", "pos")

# Artifact names inside the sentiment job's output directory.
MODEL_DIR = "model"  # SavedModel: raw strings -> probabilities, tokenizer inside
METRICS_FILE = "metrics.json"
SIZE_CURVE_PLOT = "learning_curve.png"  # accuracy against training-set size
TRAINING_CURVES_PLOT = "training_curves.png"  # loss/accuracy per epoch of the exported model
CONFUSION_MATRIX_PLOT = "confusion_matrix.png"

# Serving signature of the SavedModel (`serving_default`).
SERVING_INPUT = "text"  # string [batch], raw text
SERVING_PROBABILITIES = "probabilities"  # float32 [batch, num_classes]
SERVING_CLASS_IDS = "class_ids"  # int64 [batch], argmax of probabilities
SERVING_CLASSES = "classes"  # string [batch], the class name of class_ids
