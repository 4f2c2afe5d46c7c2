"""The digits job's feature spec and artifact names.

The contract itself (what each file holds) is documented in `jobs/digits.py`.
"""

import tensorflow as tf

# Splits and their example files, shared with the other example jobs; re-exported here.
from schemas.examples import (  # noqa: F401  pylint: disable=unused-import
    EVAL, EXAMPLES_COMPRESSION, EXAMPLES_DIR, EXAMPLES_SUFFIX, SPLITS, TRAIN)

IMAGE_SIZE = 32  # images are IMAGE_SIZE x IMAGE_SIZE grey, ink high
IMAGE_PIXELS = IMAGE_SIZE * IMAGE_SIZE  # 1024, the MLP's input width
NUM_CLASSES = 10

# One example: the image flattened row by row into 1024 floats in [0, 1] (0 is
# background, 1 is ink) and its class, an integer in [0, NUM_CLASSES).
IMAGE_KEY = "image"
LABEL_KEY = "label"
FEATURE_SPEC = {
    IMAGE_KEY: tf.io.FixedLenFeature([IMAGE_PIXELS], tf.float32),
    LABEL_KEY: tf.io.FixedLenFeature([], tf.int64),
}


# Artifact names inside the digits job's output directory.
MODEL_DIR = "model"  # SavedModel; endpoints below
SERVE_ENDPOINT = "serve"  # float32 [batch, 1024] -> probabilities [batch, 10]
SERVE_IMAGES_ENDPOINT = "serve_images"  # float32 [batch, 32, 32] -> probabilities [batch, 10]
METRICS_FILE = "metrics.json"
CONFUSION_MATRIX_PLOT = "confusion_matrix.png"
LEARNING_CURVES_PLOT = "learning_curves.png"
