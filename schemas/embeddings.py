"""Artifact names of the embedding trainer's output directory.

The contract itself is documented in `jobs/train.py`.
"""

VECTORS_NPY = "vectors.npy"  # float32 [vocab_size, dim], row i is the word on line i of vocab.txt
VOCAB_TXT = "vocab.txt"  # word<TAB>count, the corpus vocabulary in id order
WORD2VEC_TXT = "vectors.word2vec.txt"  # word2vec text format (gensim's load_word2vec_format)
WORD2VEC_BIN = "vectors.word2vec.bin"  # word2vec binary format (load_word2vec_format(binary=True))
# With --subwords only: the n-gram bucket rows, and the rule that maps a string to them.
SUBWORD_VECTORS_NPY = "subword_vectors.npy"  # float32 [buckets, dim], row b is n-gram bucket b
SUBWORDS_JSON = "subwords.json"  # {"min_n": int, "max_n": int, "buckets": int}
PROJECTOR_VECTORS_TSV = "projector/vectors.tsv"  # Embedding Projector: one vector a line
PROJECTOR_METADATA_TSV = "projector/metadata.tsv"  # Embedding Projector: word<TAB>count
SAVED_MODEL_DIR = "saved_model"  # raw strings -> token vectors and their mean
CHECKPOINT_SUFFIX = ".checkpoints"  # tf.train.Checkpoint in <output>.checkpoints/, beside the output
CHECKPOINT_FINGERPRINT_FILE = "fingerprint.json"  # in the checkpoints: corpus + parameters they belong to
LOGS_DIR = "logs"  # TensorBoard summaries
METRICS_FILE = "metrics.json"

# Serving signature of the SavedModel.
SERVING_INPUT = "text"
SERVING_VECTORS = "vectors"  # float32 [batch, max_tokens, dim], zeros at padding and tokens without one
# True at the tokens that have a vector: in the vocabulary, or (with subwords) any with an n-gram.
SERVING_MASK = "mask"  # bool [batch, max_tokens]
SERVING_MEAN = "mean"  # float32 [batch, dim], mean over the tokens of the mask
SERVING_TOKEN_IDS = "token_ids"  # int64 [batch, max_tokens], -1 at padding

# The command that writes this output, for messages of the jobs that read it.
PRODUCER = "embedflow train --corpus DIR --output DIR"
