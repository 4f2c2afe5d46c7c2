"""Tiny in-memory corpora and helpers shared by the tests."""

import glob
import gzip
import os

import numpy as np
import tensorflow as tf

from schemas import corpus as corpus_schema

# Two WikiExtractor articles; TINY_COUNTS are their token counts, counted by hand
# with the rules in pipelines/tokenize.py ("dog-cat" splits, "cat's" stays whole).
TINY_WIKI = """<doc id="1" url="https://en.wikipedia.org/wiki?curid=1" title="Cats">
Cats
The cat sat on the mat. The cat's mat!

</doc>
<doc id="2" url="https://en.wikipedia.org/wiki?curid=2" title="Dogs">
Dogs
The dog sat; the dog ran. A dog-cat, the CAT.
The dog don't... THE DOG
</doc>
"""

TINY_COUNTS = {
    "the": 8, "cat": 3, "dog": 5, "sat": 2, "mat": 2, "cats": 1, "on": 1, "cat's": 1,
    "dogs": 1, "ran": 1, "a": 1, "don't": 1,
}


def write(path, text, compress=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = text.encode("utf-8") if isinstance(text, str) else text
    if compress:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        with open(path, "wb") as f:
            f.write(data)
    return path


def read_windows(corpus_dir):
    """All window records of a corpus output, as lists of ids, in file order."""
    files = sorted(glob.glob(os.path.join(corpus_dir, corpus_schema.WINDOWS_DIR, "*")))
    records = []
    for raw in tf.data.TFRecordDataset(files):
        parsed = tf.io.parse_single_example(raw, corpus_schema.WINDOWS_FEATURE_SPEC)
        records.append(tf.sparse.to_dense(parsed[corpus_schema.TOKEN_IDS_KEY]).numpy().tolist())
    return records


def read_vocab(corpus_dir):
    with open(os.path.join(corpus_dir, corpus_schema.VOCAB_FILE), encoding="utf-8") as f:
        return [(t, int(c)) for t, c in (line.rstrip("\n").split("\t") for line in f)]


def ids_to_tokens(records, vocab):
    return [[vocab[i][0] for i in r] for r in records]


def as_int_lists(values):
    return [np.asarray(v).tolist() for v in values]


TOPICS = {
    "animals": ["cat", "dog", "horse", "cow", "sheep", "goat", "mouse", "rabbit"],
    "colors": ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"],
    "tools": ["hammer", "saw", "drill", "wrench", "chisel", "pliers", "spanner", "axe"],
}


def topic_corpus(sentences=1500, length=12, seed=0):
    """Text whose sentences each draw words from one topic, plus shared filler words.

    Skip-gram vectors trained on it put the words of a topic next to each other.
    """
    rng = np.random.default_rng(seed)
    names = sorted(TOPICS)
    lines = []
    for _ in range(sentences):
        words = TOPICS[names[rng.integers(len(names))]]
        tokens = [words[rng.integers(len(words))] if rng.random() < 0.8 else ["the", "and", "a"][rng.integers(3)]
                  for _ in range(length)]
        lines.append(" ".join(tokens))
    return "\n".join(lines) + "\n"
