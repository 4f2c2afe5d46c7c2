"""The corpus job's feature specs and artifact names.

The contract itself (what each file holds) is documented in `jobs/corpus.py`.
"""

import tensorflow as tf

# Raw input to the tf.Transform preprocessing_fn: one paragraph of text.
TEXT_KEY = "text"
RAW_DATA_FEATURE_SPEC = {TEXT_KEY: tf.io.FixedLenFeature([], tf.string)}

# Output of the preprocessing_fn: token ids of one paragraph (ragged), OOV included.
TOKEN_IDS_KEY = "token_ids"

# Name of the tf.Transform vocabulary asset (inside transform_fn/assets/).
VOCAB_ASSET_NAME = "corpus_vocab"

# One skip-gram window record: a run of in-vocabulary token ids from one paragraph.
# Every position of the run is the centre of one window; the trainer draws the
# subsampling and the dynamic window for each epoch.
WINDOWS_FEATURE_SPEC = {TOKEN_IDS_KEY: tf.io.VarLenFeature(tf.int64)}

# Artifact names inside the corpus job's output directory.
WINDOWS_DIR = "windows"
WINDOWS_PREFIX = "windows"
WINDOWS_SUFFIX = ".tfrecord"
VOCAB_FILE = "vocab.tsv"  # token<TAB>count, line i holds token id i
TRANSFORM_FN_DIR = "transform_fn"  # tft.TFTransformOutput layout (with transformed_metadata)

# The command that writes this output, for messages of the jobs that read it.
PRODUCER = "embedflow corpus --input GLOB --output DIR"
