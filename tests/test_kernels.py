"""The fused CPU kernel (trainer/kernels): alias table, exact update maths of both
skip-gram paths (word2vec's pair by pair, HogBatch's shared negatives), noise draws,
pair selection, in-place safety, errors, and the trainer's choice of kernel. CBOW and
subwords: tests/test_kernel_models.py."""

import logging

import numpy as np
import pytest
import tensorflow as tf

from tests.test_trainer import _topic_precision, _train, topic_corpus  # noqa: F401 (fixture)
from trainer import kernels, skipgram
from trainer.vectors import WordVectors
from core import outputs


def test_alias_table_draws_exactly_the_given_distribution():
    weights = np.array([5.0, 0.0, 1.0, 3.0, 0.25, 7.0, 1e-6])
    prob, alias = kernels.alias_table(weights)
    assert prob.dtype == np.float32 and alias.dtype == np.int32
    np.testing.assert_allclose(kernels.alias_probabilities(prob, alias), weights / weights.sum(), atol=1e-7)
    with pytest.raises(ValueError, match="non-negative weights"):
        kernels.alias_table([1.0, -1.0])
    with pytest.raises(ValueError, match="positive sum"):
        kernels.alias_table([0.0, 0.0])


def _reference_step(w_in, w_out, ids, rows, radius, lr, negatives, noise_word):
    """word2vec's skip-gram update, pair by pair, in numpy (every noise word = noise_word)."""
    loss = pairs = 0.0
    for i, (centre, row, r) in enumerate(zip(ids, rows, radius)):
        if row < 0:
            continue
        for j in range(max(0, i - r), min(len(ids) - 1, i + r) + 1):
            if j == i or rows[j] != row:
                continue
            l1 = w_in[ids[j]]
            grad = np.zeros_like(l1)
            targets = [(centre, 1.0)] + ([(noise_word, 0.0)] * negatives if noise_word != centre else [])
            for target, label in targets:
                x = float(np.clip(l1 @ w_out[target], -30, 30))
                g = (label - 1 / (1 + np.exp(-x))) * lr
                loss += np.log1p(np.exp(-x)) if label else np.log1p(np.exp(x))
                grad += g * w_out[target]
                w_out[target] += g * l1
            w_in[ids[j]] += grad
            pairs += 1
    return loss, pairs


def test_fused_step_matches_word2vecs_update_pair_by_pair():
    rng = np.random.RandomState(3)
    vocab, dim = 6, 5
    w_in = rng.uniform(-0.5, 0.5, (vocab, dim)).astype(np.float32)
    w_out = rng.uniform(-0.5, 0.5, (vocab, dim)).astype(np.float32)
    ids = np.array([0, 1, 2, 5, 3, 1, 1, 4, 2, 0], np.int64)
    rows = np.array([0, 0, 0, 0, 0, 1, 1, -1, 2, 2], np.int64)
    radius = np.array([2, 1, 3, 1, 2, 1, 2, 3, 1, 1], np.int32)
    # All noise mass on word 5: the draws are known, so the result is too.
    prob, alias = kernels.alias_table([0, 0, 0, 0, 0, 1.0])
    a, b = tf.Variable(w_in), tf.Variable(w_out)
    loss, pairs = kernels.skipgram_step(a, b, ids, rows, radius, prob, alias, 0.3, 11, True, 2,
                                        shared_negatives=False)
    want_loss, want_pairs = _reference_step(w_in, w_out, ids, rows, radius, 0.3, 2, noise_word=5)
    assert float(pairs) == want_pairs == 16  # counted by hand: 2+2+4+2+2 | 1+1 | - | 1+1
    assert float(loss) == pytest.approx(want_loss, rel=1e-5)
    np.testing.assert_allclose(a.numpy(), w_in, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b.numpy(), w_out, rtol=1e-5, atol=1e-6)
    # Without the loss the update is the same and the loss output is zero.
    c, d = tf.Variable(a.numpy()), tf.Variable(b.numpy())
    loss, _ = kernels.skipgram_step(c, d, ids, rows, radius, prob, alias, 0.3, 11, False, 2,
                                    shared_negatives=False)
    _reference_step(w_in, w_out, ids, rows, radius, 0.3, 2, noise_word=5)
    assert float(loss) == 0.0
    np.testing.assert_allclose(d.numpy(), w_out, rtol=1e-5, atol=1e-6)


def _reference_shared_step(w_in, w_out, ids, rows, radius, lr, negatives, noise_word):
    """HogBatch's skip-gram update in numpy: per centre, its contexts X against the centre
    and its noise words Y (drawn once, all = noise_word), updated together from the old rows."""
    loss = pairs = 0.0
    for i, (centre, row, r) in enumerate(zip(ids, rows, radius)):
        ctx = [ids[j] for j in range(max(0, i - r), min(len(ids) - 1, i + r) + 1)
               if j != i and row >= 0 and rows[j] == row]
        if not ctx:
            continue
        targets = [centre] + ([noise_word] * negatives if noise_word != centre else [])
        labels = np.array([1.0] + [0.0] * (len(targets) - 1))
        x, y = w_in[ctx].astype(np.float64), w_out[targets].astype(np.float64)
        logits = np.clip(x @ y.T, -30, 30)
        g = (labels - 1 / (1 + np.exp(-logits))) * lr
        loss += np.sum(np.where(labels > 0, np.log1p(np.exp(-logits)), np.log1p(np.exp(logits))))
        np.add.at(w_in, ctx, (g @ y).astype(np.float32))  # repeated rows add up
        np.add.at(w_out, targets, (g.T @ x).astype(np.float32))
        pairs += len(ctx)
    return loss, pairs


def test_shared_negatives_step_matches_hogbatch_reference():
    rng = np.random.RandomState(4)
    vocab, dim = 7, 37  # a width that is no multiple of any vector width
    w_in = rng.uniform(-0.5, 0.5, (vocab, dim)).astype(np.float32)
    w_out = rng.uniform(-0.5, 0.5, (vocab, dim)).astype(np.float32)
    # Word 1 twice in one window, word 5 (the noise word) as a centre: both special cases.
    ids = np.array([0, 1, 2, 5, 3, 1, 1, 4, 2, 0, 6, 6, 1], np.int64)
    rows = np.array([0, 0, 0, 0, 0, 1, 1, -1, 2, 2, 3, 3, 3], np.int64)
    radius = np.array([2, 1, 3, 1, 2, 1, 2, 3, 1, 1, 2, 1, 2], np.int32)
    prob, alias = kernels.alias_table([0, 0, 0, 0, 0, 1.0, 0])
    want_in, want_out = w_in.copy(), w_out.copy()
    want_loss, want_pairs = _reference_shared_step(want_in, want_out, ids, rows, radius, 0.3, 3, noise_word=5)
    a, b = tf.Variable(w_in), tf.Variable(w_out)
    loss, pairs = kernels.skipgram_step(a, b, ids, rows, radius, prob, alias, 0.3, 11, True, 3)
    assert float(pairs) == want_pairs == 16 + 6  # the exact test's 16, then 2 + 2 + 2
    assert float(loss) == pytest.approx(want_loss, rel=1e-5)
    np.testing.assert_allclose(a.numpy(), want_in, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b.numpy(), want_out, rtol=1e-5, atol=1e-6)
    # Not the pair-by-pair update: the two paths part at the first repeated update.
    c, d = tf.Variable(w_in), tf.Variable(w_out)
    kernels.skipgram_step(c, d, ids, rows, radius, prob, alias, 0.3, 11, True, 3, shared_negatives=False)
    assert np.abs(c.numpy() - a.numpy()).max() > 1e-3


@pytest.mark.parametrize("negatives", [5, 9])  # 9: more targets than the unrolled paths take
def test_shared_negatives_step_matches_the_reference_at_any_width(negatives):
    rng = np.random.RandomState(negatives)
    vocab = 50
    ids = rng.randint(0, vocab, 300).astype(np.int64)
    rows, radius = np.arange(300, dtype=np.int64) // 40, rng.randint(1, 6, 300).astype(np.int32)
    prob, alias = kernels.alias_table(np.eye(vocab)[7])
    for dim in (1, 16, 100, 130):
        w_in = rng.uniform(-0.5, 0.5, (vocab, dim)).astype(np.float32)
        w_out = rng.uniform(-0.5, 0.5, (vocab, dim)).astype(np.float32)
        a, b = tf.Variable(w_in), tf.Variable(w_out)
        loss, _ = kernels.skipgram_step(a, b, ids, rows, radius, prob, alias, 0.05, 1, True, negatives)
        want_loss, _ = _reference_shared_step(w_in, w_out, ids, rows, radius, 0.05, negatives, noise_word=7)
        assert float(loss) == pytest.approx(want_loss, rel=1e-4), dim
        np.testing.assert_allclose(a.numpy(), w_in, rtol=1e-4, atol=1e-5, err_msg=f"dim {dim}")
        np.testing.assert_allclose(b.numpy(), w_out, rtol=1e-4, atol=1e-5, err_msg=f"dim {dim}")


@pytest.mark.parametrize("shared", [False, True])
def test_noise_words_follow_the_alias_distribution(shared):
    """With a tiny learning rate every draw of word t moves its output row by the same
    step, so the rows' displacements count the draws. Every centre has one context (runs
    of two tokens), so shared and per-pair draws are counted alike."""
    vocab, dim, negatives = 5, 4, 5
    weights = np.array([0.0, 1.0, 2.0, 3.0, 4.0])  # word 0 is the centre and never noise
    prob, alias = kernels.alias_table(weights)
    n = 1000  # under 1024 centres: one slice, so no two threads race on these five rows
    a = tf.Variable(np.ones((vocab, dim), np.float32))
    b = tf.Variable(np.zeros((vocab, dim), np.float32))
    lr = 1e-7
    _, pairs = kernels.skipgram_step(a, b, np.zeros(n, np.int64), np.arange(n, dtype=np.int64) // 2,
                                     np.full(n, 5, np.int32), prob, alias, lr, 5, False, negatives,
                                     shared_negatives=shared)
    draws = -b.numpy()[:, 0] / (0.5 * lr)
    assert float(pairs) == n
    assert draws[0] == pytest.approx(-float(pairs), rel=1e-2)  # the centre: pulled closer each pair
    total = float(pairs) * negatives
    assert draws[1:].sum() == pytest.approx(total, rel=1e-2)
    expected = total * weights[1:] / weights.sum()
    sigma = np.sqrt(expected * (1 - weights[1:] / weights.sum()))
    assert np.all(np.abs(draws[1:] - expected) < 5 * sigma + 0.01 * expected), (draws, expected)


def test_fused_step_leaves_earlier_reads_untouched_and_refuses_bad_ids():
    a = tf.Variable(np.full((4, 3), 0.1, np.float32))
    b = tf.Variable(np.full((4, 3), 0.2, np.float32))
    before = a.read_value()
    prob, alias = kernels.alias_table([1.0, 1.0, 1.0, 1.0])
    kernels.skipgram_step(a, b, np.array([0, 1], np.int64), np.array([0, 0], np.int64),
                          np.array([1, 1], np.int32), prob, alias, 0.5, 1, True, 1)
    assert np.all(before.numpy() == np.float32(0.1))
    assert not np.all(a.numpy() == np.float32(0.1))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"ids\[1\] = 9 is outside the vocabulary \[0, 4\)"):
        kernels.skipgram_step(a, b, np.array([0, 9], np.int64), np.array([0, 0], np.int64),
                              np.array([1, 1], np.int32), prob, alias, 0.5, 1, True, 1)
    with pytest.raises(tf.errors.InvalidArgumentError, match="one entry per vocabulary row"):
        kernels.skipgram_step(a, b, np.array([0], np.int64), np.array([0], np.int64),
                              np.array([1], np.int32), prob[:3], alias[:3], 0.5, 1, True, 1)


def test_training_with_each_kernel_learns_the_topics(tmp_path, topic_corpus):  # noqa: F811
    for kernel in ("fused", "tf"):
        out = _train(topic_corpus, str(tmp_path / kernel), "--kernel", kernel)
        info = outputs.read_info(out)
        assert info["training"]["kernel"] == kernel
        assert info["training"]["words"] == pytest.approx(3 * 18000, rel=1e-3)
        assert _topic_precision(WordVectors.load(out)) >= 0.9, kernel


def test_fused_kernel_is_refused_for_several_replicas():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    assert skipgram.resolve_kernel("auto", strategy) == "fused"
    assert skipgram.resolve_kernel("tf", strategy) == "tf"

    class TwoReplicas:  # what resolve_kernel reads of a two-replica strategy
        num_replicas_in_sync = 2

        class extended:  # pylint: disable=invalid-name
            worker_devices = ("/job:worker/task:0/device:CPU:0", "/job:worker/task:1/device:CPU:0")

    assert skipgram.resolve_kernel("auto", TwoReplicas()) == "tf"
    with pytest.raises(ValueError, match="--kernel fused runs on the CPU with one replica"):
        skipgram.resolve_kernel("fused", TwoReplicas())


def test_without_a_compiler_auto_falls_back_and_fused_says_why(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(kernels.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", "no-such-compiler")
    strategy = tf.distribute.get_strategy()
    with caplog.at_level(logging.WARNING):
        assert skipgram.resolve_kernel("auto", strategy) == "tf"
    assert "no C++ compiler: 'no-such-compiler' is not on PATH" in caplog.text
    with pytest.raises(kernels.KernelUnavailable, match="install g\\+\\+ or set \\$CXX"):
        skipgram.resolve_kernel("fused", strategy)


def test_extra_compiler_flags_build_a_library_of_their_own(monkeypatch):
    monkeypatch.delenv(kernels.FLAGS_ENV, raising=False)
    plain = kernels.library_path()
    monkeypatch.setenv(kernels.FLAGS_ENV, "-mno-avx512f -DX='a b'")
    assert kernels.compiler_flags("g++")[-2:] == ["-mno-avx512f", "-DX=a b"]
    assert kernels.library_path() != plain


def test_an_unwritable_kernel_cache_is_named(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(kernels.CACHE_ENV, str(blocker))
    with pytest.raises(kernels.KernelUnavailable, match=f"cannot write the kernel cache {blocker}.*EMBEDFLOW_KERNEL_CACHE"):
        kernels.load()
