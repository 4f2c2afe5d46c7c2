"""fastText subwords: the character n-grams of a word, hashed into bucket rows.

The rule (fastText's `Dictionary::computeSubwords`, Bojanowski et al. 2017):

  * the word is written with boundary marks, `<` + word + `>`;
  * its n-grams are its substrings of n = min_n..max_n characters (Unicode code
    points; fastText counts UTF-8 characters), in order of start position, then of
    length; the lone marks `<` and `>` are never n-grams (they only could be with
    min_n = 1), and the whole marked word is one when it is short enough; a repeated
    n-gram counts every time;
  * an n-gram's bucket is `fasttext_hash(its UTF-8 bytes) % buckets`, and its row in the
    input table is vocab_size + bucket: the buckets follow the word rows.

`fasttext_hash` is 32-bit FNV-1a as fastText computes it: h = 2166136261, then for each
byte h = (h XOR b) * 16777619 mod 2^32, where b is the byte read as a *signed* char and
widened, so a byte >= 0x80 is XORed as 0xFFFFFF00 | byte. That differs from textbook
FNV-1a for non-ASCII text, and is what makes the buckets those of fastText (and of
gensim's FastText, which copies it).

A word's input vector is the mean of its subword rows: its own row, then its n-gram
rows (`ngram_table` lists them for the kernels in trainer/kernels). A word outside the
vocabulary has only its n-gram rows (`ngram_rows`), so its vector is their mean, as
fastText's; a word too short for any n-gram (only with min_n > its length + 2) has none.

`ngram_buckets_tf` is the same rule as TensorFlow ops, for the SavedModel that serves
raw strings (trainer/skipgram.py): it gives the same buckets as `ngram_buckets` (tested
on ASCII and non-ASCII words), in another order (by length, then start).
"""

from typing import NamedTuple

import numpy as np

FNV_OFFSET = 2166136261
FNV_PRIME = 16777619
_MASK = 0xFFFFFFFF


class SubwordSpec(NamedTuple):
    """fastText's -minn, -maxn, -bucket: which n-grams a word has and where they hash."""

    min_n: int = 3
    max_n: int = 6
    buckets: int = 2_000_000

    def check(self):
        """Raises a ValueError naming the flag unless the three make a valid rule."""
        _check(self.min_n, self.max_n, self.buckets)
        return self

    def as_dict(self):
        return {"min_n": self.min_n, "max_n": self.max_n, "buckets": self.buckets}


class SubwordTable(NamedTuple):
    """The subword rows of every vocabulary word, as CSR: word w's rows are
    rows[offsets[w]:offsets[w + 1]], its own row w first."""

    offsets: np.ndarray  # int64 [V + 1]
    rows: np.ndarray  # int32 [nnz]


def _extend(h, data):
    """The hash h continued over the bytes `data`."""
    for byte in data:
        h = ((h ^ (byte | 0xFFFFFF00 if byte >= 0x80 else byte)) * FNV_PRIME) & _MASK
    return h


def fasttext_hash(data):
    """fastText's FNV-1a of `data` (bytes): bytes >= 0x80 are sign-extended first."""
    return _extend(FNV_OFFSET, data)


def _check(min_n, max_n, buckets):
    if min_n < 1:
        raise ValueError(f"--min-n must be >= 1, got {min_n}")
    if max_n < min_n:
        raise ValueError(f"--max-n must be >= --min-n ({min_n}), got {max_n}")
    if buckets < 1:
        raise ValueError(f"--buckets must be >= 1, got {buckets}")


def ngram_buckets(word, min_n=3, max_n=6, buckets=2_000_000):
    """The buckets of the n-grams of `word`, in fastText's order (see the module doc)."""
    _check(min_n, max_n, buckets)
    chars = [c.encode("utf-8") for c in f"<{word}>"]
    found = []
    for start in range(len(chars)):
        # Extends the hash one character at a time: n-grams of one start share prefixes.
        h = FNV_OFFSET
        for n, char in enumerate(chars[start:start + max_n], start=1):
            h = _extend(h, char)
            if n >= min_n and not (n == 1 and (start == 0 or start == len(chars) - 1)):
                found.append(h % buckets)
    return found


def ngram_rows(word, vocab_size, min_n=3, max_n=6, buckets=2_000_000):
    """Input-table rows of the n-grams of any string (vocab_size + bucket each)."""
    return [vocab_size + b for b in ngram_buckets(word, min_n, max_n, buckets)]


def ngram_table(vocab, min_n=3, max_n=6, buckets=2_000_000):
    """The subword table of a vocabulary: every word's own row, then its n-gram rows.

    Args:
      vocab: the words, row i is word i.
      min_n, max_n: n-gram lengths in characters (fastText's -minn, -maxn).
      buckets: n-gram rows after the vocabulary rows (fastText's -bucket).

    Returns:
      SubwordTable; the input table it indexes has len(vocab) + buckets rows.

    Raises:
      ValueError: min_n < 1, max_n < min_n, buckets < 1, or more rows than int32 holds.
    """
    _check(min_n, max_n, buckets)
    if len(vocab) + buckets > np.iinfo(np.int32).max:
        raise ValueError(f"--buckets {buckets} with {len(vocab)} words makes more rows than int32 holds")
    lists = [[w] + ngram_rows(word, len(vocab), min_n, max_n, buckets) for w, word in enumerate(vocab)]
    offsets = np.zeros(len(vocab) + 1, np.int64)
    np.cumsum([len(rows) for rows in lists], out=offsets[1:])
    rows = np.fromiter((r for rows in lists for r in rows), np.int32, count=int(offsets[-1]))
    return SubwordTable(offsets, rows)


def ngram_means(words, spec, ngram_vectors):
    """The vector of each string from its n-gram rows alone (a word outside the vocabulary).

    Args:
      words: strings.
      spec: SubwordSpec.
      ngram_vectors: float32 [buckets, dim], row b is bucket b.

    Returns:
      (float32 [len(words), dim] the means, bool [len(words)] whether the word has an n-gram;
      a word without one gets zeros).
    """
    means = np.zeros((len(words), ngram_vectors.shape[1]), np.float32)
    found = np.zeros(len(words), bool)
    for i, word in enumerate(words):
        found_buckets = ngram_buckets(word, *spec)
        if found_buckets:
            means[i] = ngram_vectors[found_buckets].mean(axis=0)
            found[i] = True
    return means, found


def fasttext_hash_tf(data, max_bytes):
    """`fasttext_hash` of every string of a 1-D string tensor, as int64 in [0, 2^32).

    Args:
      data: string tensor [M], each at most `max_bytes` bytes.
      max_bytes: a static bound on their length (bytes past it are not hashed).
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    raw = tf.cast(tf.io.decode_raw(data, tf.uint8, fixed_length=max_bytes), tf.int64)  # zero-padded
    lengths = tf.cast(tf.strings.length(data), tf.int64)
    h = tf.fill(tf.shape(data), tf.constant(FNV_OFFSET, tf.int64))
    for j in range(max_bytes):
        byte = raw[:, j]
        signed = tf.where(byte >= 0x80, tf.bitwise.bitwise_or(byte, 0xFFFFFF00), byte)  # C's signed char
        step = tf.bitwise.bitwise_and(tf.bitwise.bitwise_xor(h, signed) * FNV_PRIME, _MASK)
        h = tf.where(j < lengths, step, h)
    return h


def ngram_buckets_tf(words, spec):
    """The buckets of the n-grams of each string of a 1-D string tensor, as TensorFlow ops.

    Args:
      words: string tensor [N] (UTF-8).
      spec: SubwordSpec.

    Returns:
      int64 RaggedTensor [N, None]: for each word the buckets `ngram_buckets` gives, ordered
      by n-gram length, then start.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    min_n, max_n, buckets = spec.check()
    chars = tf.strings.unicode_split("<" + words + ">", "UTF-8")  # [N, code points + 2]
    grams = []
    for n in range(min_n, max_n + 1):
        source = chars[:, 1:-1] if n == 1 else chars  # the lone marks are never n-grams
        grams.append(tf.strings.ngrams(source, n, separator="", preserve_short_sequences=False))
    grams = tf.concat(grams, axis=1)
    # A code point takes at most 4 UTF-8 bytes.
    return grams.with_flat_values(fasttext_hash_tf(grams.flat_values, 4 * max_n) % buckets)
