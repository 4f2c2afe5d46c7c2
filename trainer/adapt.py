"""Adapting pretrained word vectors to a task's own texts before a classifier uses them.

A classifier with little labelled data sees few of its domain's words, and the corpus
the vectors were trained on (Wikipedia) seldom uses them the way the task's texts do
(reviews: "a dull, lifeless mess"). `adapt_vectors` continues skip-gram training on the
task's training texts, without their labels: task-adaptive pretraining, in the sense of
Gururangan et al. (2020), for word vectors. It starts from the pretrained input vectors
and zero output vectors (word2vec's start for them; the trainer does not export its
output vectors), subsamples and draws noise words by the corpus counts the vectors were
trained with, and decays the learning rate linearly over all its epochs, as the trainer
does. Its caller (`trainer.sentiment.unit_vectors`) passes training texts only: the
held-out texts of a fold never shape the vectors that fold is tested with.

It runs the trainer's fused CPU kernel (`trainer.kernels`) on the texts in memory: the
sentiment sample's 7,000 training texts (140k tokens) take about a second per 10 epochs
on 2 cores.
"""

import logging
import time

import numpy as np
import tensorflow as tf

_BATCH_RECORDS = 256  # texts per kernel call (a few thousand tokens)
_MIN_LR_RATIO = 1e-4  # as the trainer: the rate decays linearly to this share of the start


def text_tokens(texts, vocab_size):
    """Token ids of `texts` (int arrays of corpus ids) in the vocabulary, one record each.

    Returns:
      (tokens int32 [T], record_starts int64 [R + 1]); padding (-1) and the corpus OOV id
      (vocab_size) are dropped, and so are texts left empty.
    """
    kept = [t[(t >= 0) & (t < vocab_size)] for t in (np.asarray(t, np.int64) for t in texts)]
    kept = [t for t in kept if len(t)]
    tokens = np.concatenate(kept).astype(np.int32) if kept else np.zeros([0], np.int32)
    starts = np.concatenate([[0], np.cumsum([len(t) for t in kept])]).astype(np.int64)
    return tokens, starts


def adapt_vectors(vectors, counts, texts, *, epochs, window=5, negatives=5, sample=1e-3,
                  learning_rate=0.025, seed=0):
    """Continues skip-gram training of `vectors` on `texts`; returns the new vectors.

    Args:
      vectors: float32 [V, d], row i the vector of corpus id i (not changed).
      counts: int [V], the corpus count of each id (subsampling and noise follow them).
      texts: iterable of int arrays of corpus ids (ids outside [0, V) are skipped).
      epochs: passes over the texts; 0 returns `vectors` as they are.
      window, negatives, sample, learning_rate: as the trainer's flags of the same names.
      seed: the texts' order, subsampling, windows and noise follow from it.

    Returns:
      float32 [V, d]: a copy of `vectors`, rows of words the texts hold trained further.
    """
    from trainer import kernels  # pylint: disable=import-outside-toplevel
    from trainer.skipgram import keep_probabilities  # pylint: disable=import-outside-toplevel

    vectors = np.asarray(vectors, np.float32)
    counts = np.asarray(counts, np.float64)
    if len(counts) != len(vectors):
        raise ValueError(f"adapt_vectors: {len(counts)} counts for {len(vectors)} vectors")
    tokens, starts = text_tokens(texts, len(vectors))
    if epochs <= 0 or not len(tokens):
        return vectors.copy()
    started = time.time()
    try:
        kernels.load()
    except kernels.KernelUnavailable as error:
        raise kernels.KernelUnavailable(f"adapting the vectors needs the fused skip-gram kernel ({error}); "
                                        f"pass --adapt-epochs 0 to use them as trained") from error
    inputs = tf.Variable(vectors)
    outputs = tf.Variable(tf.zeros_like(vectors))
    tokens_t, starts_t = tf.constant(tokens), tf.constant(starts)
    keep = tf.constant(keep_probabilities(counts, sample))
    noise_prob, noise_alias = (tf.constant(t) for t in kernels.alias_table(np.maximum(counts, 1) ** 0.75))

    @tf.function
    def step(records, step_seed, rate):
        ids, rows, radius, words = kernels.draw_batch(tokens_t, starts_t, records, keep, step_seed, window)
        kernels.skipgram_step(inputs, outputs, ids, rows, radius, noise_prob, noise_alias, rate, step_seed,
                              False, negatives)
        return words

    rng = np.random.default_rng([seed, 0x7A97])
    total, done, calls = float(epochs * len(tokens)), 0.0, 0
    for _ in range(epochs):
        order = rng.permutation(len(starts) - 1)
        for at in range(0, len(order), _BATCH_RECORDS):
            rate = learning_rate * max(1.0 - done / total, _MIN_LR_RATIO)
            step_seed = (np.int64(seed) << 32) + calls
            done += float(step(tf.constant(order[at:at + _BATCH_RECORDS], tf.int64),
                               tf.constant(step_seed, tf.int64), tf.constant(rate, tf.float32)))
            calls += 1
    adapted = inputs.numpy()
    if not np.isfinite(adapted).all():
        raise FloatingPointError(f"adapting the vectors diverged at learning rate {learning_rate}; "
                                 f"lower it or adapt for fewer epochs")
    seconds = time.time() - started
    logging.info("adapt: %d epochs over %d texts (%d tokens) in %.1f s (%.0f tokens/s)", epochs,
                 len(starts) - 1, len(tokens), seconds, done / max(seconds, 1e-9))
    return adapted
