"""Adapting pretrained vectors to a task's texts (trainer/adapt.py): which tokens it reads,
which rows it moves, that co-occurring words move together, and that it is repeatable."""

import numpy as np
import pytest

from trainer import adapt

VOCAB = 40
GROUP_A, GROUP_B = range(0, 10), range(10, 20)  # words 20..39 appear in no text


def group_texts(count, seed):
    """Texts of 6 to 12 words, each drawn from one group only."""
    rng = np.random.default_rng(seed)
    texts = []
    for i in range(count):
        group = np.array(GROUP_A if i % 2 else GROUP_B)
        texts.append(rng.choice(group, size=int(rng.integers(6, 13))))
    return texts


def unit(rows):
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def mean_cosine(vectors, left, right):
    a, b = unit(vectors[list(left)]), unit(vectors[list(right)])
    cosines = a @ b.T
    if list(left) == list(right):
        cosines = cosines[~np.eye(len(a), dtype=bool)]
    return float(cosines.mean())


@pytest.fixture(scope="module")
def start():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(VOCAB, 16)).astype(np.float32)
    counts = rng.integers(50, 500, size=VOCAB)
    return vectors, counts


def test_text_tokens_drop_padding_oov_and_empty_texts():
    tokens, starts = adapt.text_tokens([np.array([3, -1, 5, 9]), np.array([-1, 9]), np.array([], np.int64),
                                        np.array([0, 1, 2])], vocab_size=9)
    assert tokens.tolist() == [3, 5, 0, 1, 2]  # -1 pads, 9 is the OOV id
    assert starts.tolist() == [0, 2, 5]  # two texts left: the OOV-only and the empty one are gone
    assert tokens.dtype == np.int32 and starts.dtype == np.int64


def test_words_that_share_texts_move_together_and_absent_words_stay(start):
    vectors, counts = start
    before = vectors.copy()
    adapted = adapt.adapt_vectors(vectors, counts, group_texts(400, seed=1), epochs=20, window=5,
                                  sample=0, seed=3)
    np.testing.assert_array_equal(vectors, before)  # the caller's array is not touched
    np.testing.assert_array_equal(adapted[20:], vectors[20:])  # no text holds them
    assert not np.allclose(adapted[:20], vectors[:20])
    within = (mean_cosine(adapted, GROUP_A, GROUP_A) + mean_cosine(adapted, GROUP_B, GROUP_B)) / 2
    across = mean_cosine(adapted, GROUP_A, GROUP_B)
    start_within = (mean_cosine(vectors, GROUP_A, GROUP_A) + mean_cosine(vectors, GROUP_B, GROUP_B)) / 2
    assert abs(start_within) < 0.2  # random vectors: no structure to begin with
    assert within > across + 0.3


def test_adaptation_is_repeatable_and_zero_epochs_change_nothing(start):
    vectors, counts = start
    texts = group_texts(50, seed=2)
    first = adapt.adapt_vectors(vectors, counts, texts, epochs=3, seed=7)
    np.testing.assert_array_equal(first, adapt.adapt_vectors(vectors, counts, texts, epochs=3, seed=7))
    assert not np.array_equal(first, adapt.adapt_vectors(vectors, counts, texts, epochs=3, seed=8))
    unchanged = adapt.adapt_vectors(vectors, counts, texts, epochs=0)
    np.testing.assert_array_equal(unchanged, vectors)
    assert unchanged is not vectors


def test_counts_must_match_the_vectors(start):
    vectors, counts = start
    with pytest.raises(ValueError, match="39 counts for 40 vectors"):
        adapt.adapt_vectors(vectors, counts[:-1], group_texts(4, seed=0), epochs=1)


def test_without_the_kernel_the_error_names_the_way_around_it(start, monkeypatch):
    from trainer import kernels

    def unavailable():
        raise kernels.KernelUnavailable("no C++ compiler")

    monkeypatch.setattr(kernels, "load", unavailable)
    vectors, counts = start
    with pytest.raises(kernels.KernelUnavailable, match=r"no C\+\+ compiler.*--adapt-epochs 0"):
        adapt.adapt_vectors(vectors, counts, group_texts(4, seed=0), epochs=1)
