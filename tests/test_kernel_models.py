"""The fused CPU kernel's other models (trainer/kernels): CBOW and fastText subwords,
each against a numpy reference of its exact update; subword hashing (trainer/subwords)
against the documented rule and gensim's FastText; noise draws; table checks; and that
each op learns topics from a small stream."""

import numpy as np
import pytest
import tensorflow as tf

from tests import fixtures
from trainer import kernels, subwords

# A subword table over 6 words and 4 bucket rows (6..9), written by hand: a shared n-gram
# row (6, 7, 9), a row twice in one word (7 in word 1), a word with only its own row (2).
TABLE = [[0, 6, 7], [1, 7, 7], [2], [3, 9, 6], [4, 8], [5, 9]]
IDS = np.array([0, 1, 2, 5, 3, 1, 1, 4, 2, 0, 3, 3, 1], np.int64)
ROWS = np.array([0, 0, 0, 0, 0, 1, 1, -1, 2, 2, 3, 3, 3], np.int64)
RADIUS = np.array([2, 1, 3, 1, 2, 1, 2, 3, 1, 1, 2, 1, 2], np.int32)
NOISE_WORD = 5  # all noise mass on word 5, which is also a centre once
DIM = 37  # no multiple of any vector width


def _csr(lists):
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in lists])]).astype(np.int64)
    return subwords.SubwordTable(offsets, np.array([r for rows in lists for r in rows], np.int32))


def _contexts(ids, rows, i, r):
    """Positions of centre i's contexts: the same run, within its radius."""
    if rows[i] < 0:
        return []
    return [j for j in range(max(0, i - r), min(len(ids) - 1, i + r) + 1) if j != i and rows[j] == rows[i]]


def _predict(h, w_out, target, noise_word, negatives, lr, grad):
    """h against target (label 1) then each noise word (label 0, skipped if the target):
    the output rows updated in turn, h's gradient added to grad; returns the loss."""
    loss = 0.0
    for word, label in [(target, 1.0)] + ([(noise_word, 0.0)] * negatives if noise_word != target else []):
        x = float(np.clip(h @ w_out[word], -30, 30))
        g = (label - 1 / (1 + np.exp(-x))) * lr
        loss += np.log1p(np.exp(-x)) if label else np.log1p(np.exp(x))
        grad += g * w_out[word]
        w_out[word] += g * h
    return loss


def _predict_together(h, w_out, targets, labels, weights, lr, grad):
    """h against all its targets at once: every term from the rows before the update,
    term c counted weights[c] times; a repeated row gets each of its updates."""
    x = np.clip(w_out[targets] @ h, -30, 30)
    g = (np.asarray(labels) - 1 / (1 + np.exp(-x))) * lr * np.asarray(weights)
    loss = float(np.sum(np.asarray(weights) * np.where(labels, np.log1p(np.exp(-x)), np.log1p(np.exp(x)))))
    grad += g @ w_out[targets]
    np.add.at(w_out, targets, np.outer(g, h).astype(np.float32))
    return loss


def _reference_cbow(w_in, w_out, lr, negatives, table=None):
    """word2vec's CBOW (cbow_mean=1); with a table fastText's: h is the mean of all the
    rows of all the contexts, and its gradient is added whole to each of them. The
    centre's output row and its noise words' are updated together."""
    loss = centres = 0.0
    for i, centre in enumerate(IDS):
        ctx = _contexts(IDS, ROWS, i, RADIUS[i])
        if not ctx:
            continue
        bag = [row for j in ctx for row in (table[IDS[j]] if table else [IDS[j]])]
        h, grad = w_in[bag].mean(axis=0), np.zeros(w_in.shape[1])
        noise = [NOISE_WORD] * negatives if NOISE_WORD != centre else []
        loss += _predict_together(h, w_out, [centre] + noise, [1] + [0] * len(noise), [1] * (1 + len(noise)),
                                  lr, grad)
        np.add.at(w_in, bag, grad.astype(np.float32))  # a repeated row gets it each time
        centres += 1
    return loss, centres


def _reference_subword_skipgram(w_in, w_out, lr, negatives, table):
    """fastText's skip-gram with noise words drawn per pair, the centre's vector composed
    once and its gradient applied after all its pairs."""
    loss = pairs = 0.0
    for i, centre in enumerate(IDS):
        ctx = _contexts(IDS, ROWS, i, RADIUS[i])
        if not ctx:
            continue
        bag = table[centre]
        h, grad = w_in[bag].mean(axis=0), np.zeros(w_in.shape[1])
        for j in ctx:
            loss += _predict(h, w_out, IDS[j], NOISE_WORD, negatives, lr, grad)
        np.add.at(w_in, bag, grad.astype(np.float32))
        pairs += len(ctx)
    return loss, pairs


def _reference_subword_skipgram_shared(w_in, w_out, lr, negatives, table, group=3):
    """The same with HogBatch's sharing: noise words drawn once for each `group` of the
    centre's pairs, each counted once per pair of its group whose context is not that
    word; all output rows updated together."""
    loss = pairs = 0.0
    for i, centre in enumerate(IDS):
        ctx = _contexts(IDS, ROWS, i, RADIUS[i])
        if not ctx:
            continue
        bag, targets = table[centre], [int(IDS[j]) for j in ctx]
        noise, weights = [], []
        for g in range(0, len(targets), group):
            stands_for = sum(t != NOISE_WORD for t in targets[g:g + group])
            if stands_for:
                noise += [NOISE_WORD] * negatives
                weights += [stands_for] * negatives
        h, grad = w_in[bag].mean(axis=0), np.zeros(w_in.shape[1])
        loss += _predict_together(h, w_out, targets + noise, [1] * len(targets) + [0] * len(noise),
                                  [1] * len(targets) + weights, lr, grad)
        np.add.at(w_in, bag, grad.astype(np.float32))
        pairs += len(ctx)
    return loss, pairs


def _tables(in_rows, seed):
    rng = np.random.RandomState(seed)
    return (rng.uniform(-0.5, 0.5, (in_rows, DIM)).astype(np.float32),
            rng.uniform(-0.5, 0.5, (6, DIM)).astype(np.float32))


def _check(step, reference, in_rows, table, expected_count):
    w_in, w_out = _tables(in_rows, seed=in_rows)
    a, b = tf.Variable(w_in), tf.Variable(w_out)
    prob, alias = kernels.alias_table(np.eye(6)[NOISE_WORD])
    loss, count = step(a, b, IDS, ROWS, RADIUS, prob, alias, 0.3, 11, True, 2, _csr(table) if table else None)
    want_loss, want_count = reference(w_in, w_out, 0.3, 2, table)
    assert float(count) == want_count == expected_count
    assert float(loss) == pytest.approx(want_loss, rel=1e-5)
    np.testing.assert_allclose(a.numpy(), w_in, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b.numpy(), w_out, rtol=1e-5, atol=1e-6)
    return a.numpy()


def _cbow(*args):
    *head, table = args
    return kernels.cbow_step(*head, subwords=table)


def test_cbow_step_matches_word2vecs_update():
    # Centres with a context: 5 in run 0, 2 in run 1, 2 in run 2, 3 in run 3.
    _check(_cbow, _reference_cbow, 6, None, expected_count=12)


def test_cbow_with_subwords_matches_fasttexts_update():
    w_in = _check(_cbow, _reference_cbow, 10, TABLE, expected_count=12)
    assert not np.allclose(w_in[6:], _tables(10, seed=10)[0][6:])  # the n-gram rows learnt


def _subword_skipgram_pairs(*args):
    return kernels.subword_skipgram_step(*args, shared_negatives=False)


def test_subword_skipgram_matches_fasttexts_update_per_centre():
    # Pairs: 2+2+4+2+2 | 1+1 | - | 1+1 | 2+2+2.
    w_in = _check(_subword_skipgram_pairs, _reference_subword_skipgram, 10, TABLE, expected_count=22)
    assert not np.allclose(w_in[6:], _tables(10, seed=10)[0][6:])


def test_subword_skipgram_shares_each_centres_noise_words_by_default():
    # Word 5, all the noise, is a context of the centres at positions 2 and 4 (run 0):
    # there a noise word stands for one pair fewer than its group has. (With one noise
    # word the group size cannot show: the groups' weights add up to the same update.)
    w_in = _check(kernels.subword_skipgram_step, _reference_subword_skipgram_shared, 10, TABLE, expected_count=22)
    pairs_in = _check(_subword_skipgram_pairs, _reference_subword_skipgram, 10, TABLE, expected_count=22)
    assert np.abs(w_in - pairs_in).max() > 1e-3  # not the pair-by-pair update


@pytest.mark.parametrize("op", ["cbow", "subword_skipgram"])
def test_cbow_and_subword_noise_words_follow_the_alias_distribution(op):
    """With a tiny learning rate every draw of word t moves its output row by the same
    step; every centre has one context (runs of two), so n draws of `negatives` words."""
    weights = np.array([0.0, 1.0, 2.0, 3.0, 4.0])  # word 0 is every token and never noise
    prob, alias = kernels.alias_table(weights)
    n, negatives, lr = 1000, 5, 1e-7  # under 1024 centres: one thread, no Hogwild races
    a = tf.Variable(np.ones((5, 4), np.float32))
    b = tf.Variable(np.zeros((5, 4), np.float32))
    table = _csr([[w] for w in range(5)])
    step = kernels.cbow_step if op == "cbow" else kernels.subword_skipgram_step
    _, count = step(a, b, np.zeros(n, np.int64), np.arange(n, dtype=np.int64) // 2, np.full(n, 3, np.int32),
                    prob, alias, lr, 5, False, negatives, table)
    draws = -b.numpy()[:, 0] / (0.5 * lr)
    assert float(count) == n
    assert draws[0] == pytest.approx(-n, rel=1e-2)
    expected = n * negatives * weights[1:] / weights.sum()
    sigma = np.sqrt(expected * (1 - weights[1:] / weights.sum()))
    assert np.all(np.abs(draws[1:] - expected) < 5 * sigma + 0.01 * expected), (draws, expected)


def test_subword_ops_refuse_bad_tables():
    a, b = tf.Variable(np.zeros((10, 4), np.float32)), tf.Variable(np.zeros((6, 4), np.float32))
    prob, alias = kernels.alias_table(np.ones(6))
    args = (a, b, IDS, ROWS, RADIUS, prob, alias, 0.1, 1, False, 2)
    bad_row = _csr(TABLE[:5] + [[5, 10]])
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"subword_rows\[13\] = 10 is outside input_vectors \[0, 10\)"):
        kernels.subword_skipgram_step(*args, bad_row)
    with pytest.raises(tf.errors.InvalidArgumentError, match="word 2 has no subword rows"):
        kernels.cbow_step(*args, subwords=_csr(TABLE[:2] + [[]] + TABLE[3:]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="vocabulary size \\+ 1 = 7 entries, got 6"):
        kernels.subword_skipgram_step(*args, _csr(TABLE[:5]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="matrices of one shape"):
        kernels.cbow_step(*args)  # no table: both tables must be [V, d]
    small = tf.Variable(np.zeros((4, 4), np.float32))
    with pytest.raises(tf.errors.InvalidArgumentError, match="at least as many rows as output_vectors"):
        kernels.subword_skipgram_step(small, b, *args[2:], _csr(TABLE))


# ------------------------------------------------------------------------ hashing


def _documented_buckets(word, min_n, max_n, buckets):
    """The module docstring's rule, written out plainly: slice the marked word into its
    n-grams, hash each one's UTF-8 bytes with sign-extended bytes."""
    marked = f"<{word}>"
    found = []
    for start in range(len(marked)):
        for n in range(min_n, max_n + 1):
            gram = marked[start:start + n]
            if len(gram) < n or gram in ("<", ">"):
                continue
            h = 2166136261
            for byte in gram.encode("utf-8"):
                signed = byte - 256 if byte > 127 else byte  # C's (int8_t) byte ...
                h = ((h ^ (signed & 0xFFFFFFFF)) * 16777619) % 2**32  # ... widened to uint32
            found.append(h % buckets)
    return found


WORDS = ["where", "a", "aaaa", "naïve", "straße", "日本語", "Ωμέγα", "emoji🙂"]


@pytest.mark.parametrize("min_n, max_n, buckets", [(3, 6, 2_000_000), (1, 3, 1000), (2, 4, 7)])
def test_ngram_buckets_follow_the_documented_rule_and_gensim(min_n, max_n, buckets):
    from gensim.models.fasttext import ft_ngram_hashes  # pylint: disable=import-outside-toplevel

    for word in WORDS:
        ours = subwords.ngram_buckets(word, min_n, max_n, buckets)
        assert ours == _documented_buckets(word, min_n, max_n, buckets), word
        assert ours == list(ft_ngram_hashes(word, min_n, max_n, buckets)), word
    # Sign extension matters only beyond ASCII: the plain FNV-1a of "é" differs.
    plain = 2166136261
    for byte in "é".encode():
        plain = ((plain ^ byte) * 16777619) % 2**32
    assert subwords.fasttext_hash("é".encode()) != plain
    assert subwords.fasttext_hash(b"ab") == ((((2166136261 ^ 97) * 16777619) % 2**32 ^ 98) * 16777619) % 2**32


def test_ngram_table_lists_each_words_row_then_its_ngram_rows():
    vocab = ["where", "a", "naïve"]
    table = subwords.ngram_table(vocab, 3, 6, buckets=100)
    assert table.offsets.dtype == np.int64 and table.rows.dtype == np.int32
    assert table.offsets.tolist() == [0, 15, 17, 32]  # own row + 14, 1 + 1 ("<a>"), 1 + 14
    for w, word in enumerate(vocab):
        rows = table.rows[table.offsets[w]:table.offsets[w + 1]].tolist()
        assert rows == [w] + [3 + b for b in subwords.ngram_buckets(word, 3, 6, 100)]
    assert subwords.ngram_rows("wherever", 3, 3, 6, 100)[:4] == table.rows[1:5].tolist()  # "<wh" ... shared
    with pytest.raises(ValueError, match="--min-n must be >= 1, got 0"):
        subwords.ngram_table(vocab, 0, 6, 100)
    with pytest.raises(ValueError, match=r"--max-n must be >= --min-n \(4\), got 3"):
        subwords.ngram_table(vocab, 4, 3, 100)
    with pytest.raises(ValueError, match="--buckets must be >= 1, got 0"):
        subwords.ngram_table(vocab, 3, 6, 0)


# ------------------------------------------------------------------------ learning


def _topic_stream():
    """The topic fixture corpus as ids: (vocab, counts, ids, rows)."""
    lines = [line.split() for line in fixtures.topic_corpus().splitlines()]
    counts = {}
    for line in lines:
        for t in line:
            counts[t] = counts.get(t, 0) + 1
    vocab = sorted(counts, key=lambda t: (-counts[t], t))
    index = {t: i for i, t in enumerate(vocab)}
    ids = np.array([index[t] for line in lines for t in line], np.int64)
    rows = np.repeat(np.arange(len(lines), dtype=np.int64), [len(line) for line in lines])
    return vocab, np.array([counts[t] for t in vocab], np.float64), ids, rows


def _topic_precision(vocab, vectors, topn=7):
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    hits = total = 0
    for words in fixtures.TOPICS.values():
        for w in words:
            sims = unit @ unit[vocab.index(w)]
            near = [vocab[k] for k in np.argsort(-sims) if k != vocab.index(w)][:topn]
            hits += sum(n in words for n in near)
            total += topn
    return hits / total


@pytest.mark.parametrize("op", ["skipgram-exact", "skipgram-fast", "cbow", "cbow-subwords", "skipgram-subwords"])
def test_each_op_learns_the_topics(op):
    vocab, counts, ids, rows = _topic_stream()
    dim, epochs, batch = 32, 3, 2048
    table = subwords.ngram_table(vocab, 3, 6, buckets=1000) if op.endswith("subwords") else None
    rng = np.random.RandomState(0)
    in_rows = len(vocab) + (1000 if table else 0)
    a = tf.Variable(rng.uniform(-0.5 / dim, 0.5 / dim, (in_rows, dim)).astype(np.float32))
    b = tf.Variable(np.zeros((len(vocab), dim), np.float32))
    prob, alias = kernels.alias_table(counts ** 0.75)
    steps = epochs * -(-len(ids) // batch)
    for step in range(steps):
        s = (step * batch) % len(ids)
        lr = np.float32(0.025 * (1 - step / steps))
        radius = rng.randint(1, 6, len(ids[s:s + batch])).astype(np.int32)
        args = (a, b, ids[s:s + batch], rows[s:s + batch], radius, prob, alias, lr, step, False, 5)
        if op.startswith("skipgram-") and table is None:
            kernels.skipgram_step(*args, shared_negatives=op == "skipgram-fast")
        elif op == "skipgram-subwords":
            kernels.subword_skipgram_step(*args, table)
        else:
            kernels.cbow_step(*args, subwords=table)
    vectors = a.numpy()
    if table is not None:  # a word's vector is the mean of its subword rows
        vectors = np.stack([vectors[table.rows[table.offsets[w]:table.offsets[w + 1]]].mean(axis=0)
                            for w in range(len(vocab))])
    assert _topic_precision(vocab, vectors[:len(vocab)]) >= 0.9, op
