"""Where the labelled-example jobs (digits, sentiment) keep their examples.

Each split's examples are GZIP TFRecords of tf.train.Example under the output:
examples/{split}-SSSSS-of-NNNNN.tfrecord.gz. The features are each job's own
(schemas/digits.py, schemas/sentiment.py).
"""

TRAIN = "train"
EVAL = "eval"
SPLITS = (TRAIN, EVAL)
EXAMPLES_DIR = "examples"
EXAMPLES_SUFFIX = ".tfrecord.gz"
SHARD_NAME_TEMPLATE = "-SSSSS-of-NNNNN"  # Beam's shard_name_template of the example files
EXAMPLES_COMPRESSION = "GZIP"  # tf.data.TFRecordDataset compression_type
