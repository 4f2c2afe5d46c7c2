"""Embedding trainer: sampling maths, pair generation, training, exports, resume, evaluation."""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from core import outputs
from jobs import corpus as corpus_job
from jobs import train as train_job
from schemas import embeddings as schema
from tests import fixtures
from trainer import evaluate, exchange, kernels, skipgram
from trainer.vectors import WordVectors

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def topic_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("topic")
    text = fixtures.write(str(root / "in" / "topics.txt"), fixtures.topic_corpus())
    out = str(root / "corpus")
    corpus_job.run(["--input", text, "--output", out, "--min-count", "1", "--num-shards", "2"])
    return out


def _train(corpus_dir, out, *extra):
    return train_job.run(["--corpus", corpus_dir, "--output", out, "--dim", "32", "--epochs", "3",
                         "--batch-size", "512", *extra])


def _topic_precision(vectors, topn=7):
    """Share of each topic word's nearest neighbours that belong to its topic."""
    hits = total = 0
    for words in fixtures.TOPICS.values():
        for w in words:
            near = [n for n, _ in vectors.most_similar(w, topn=topn)]
            hits += sum(n in words for n in near)
            total += topn
    return hits / total


# ------------------------------------------------------------------------ sampling


def test_keep_probabilities_follow_word2vec_formula():
    counts = np.array([1000, 100, 1], dtype=np.int64)
    keep = skipgram.keep_probabilities(counts, 1e-2)
    t = 1e-2 * counts.sum()
    expected = np.minimum((np.sqrt(counts / t) + 1) * t / counts, 1.0)
    np.testing.assert_allclose(keep, expected, rtol=1e-6)
    assert keep[0] < keep[1] <= keep[2] == 1.0
    assert skipgram.keep_probabilities(counts, 0).tolist() == [1.0, 1.0, 1.0]


def test_noise_distribution_is_unigram_to_the_three_quarters():
    counts = np.array([81, 16, 1], dtype=np.int64)
    cdf = skipgram.noise_cdf(counts)
    probs = np.diff(np.concatenate([[0.0], cdf]))
    np.testing.assert_allclose(probs, np.array([27, 8, 1]) / 36, rtol=1e-5)
    u = tf.random.stateless_uniform([200_000], [1, 2])
    drawn = tf.searchsorted(tf.constant(cdf), u, side="right").numpy()
    np.testing.assert_allclose(np.bincount(drawn, minlength=3) / 200_000, probs, atol=0.005)


def _pairs(ids, rows, radius, window):
    """(centre, context) id pairs that context_masks admits."""
    pairs = []
    for o, mask in zip(skipgram.offsets(window), skipgram.context_masks(rows, radius, window)):
        for i in np.flatnonzero(mask.numpy()):
            pairs.append((int(ids[i]), int(ids[i + o])))
    return sorted(pairs)


def test_pairs_with_window_one_are_neighbours_within_a_run():
    ids = np.array([10, 11, 12, 20, 21])
    rows = tf.constant([0, 0, 0, 1, 1], tf.int64)
    radius = tf.ones([5], tf.int32)
    assert _pairs(ids, rows, radius, 1) == sorted(
        [(10, 11), (11, 10), (11, 12), (12, 11), (20, 21), (21, 20)])


def test_radius_limits_each_centre_and_padding_pairs_with_nothing():
    ids = np.array([1, 2, 3, 4, 9])
    rows = tf.constant([0, 0, 0, 0, -1], tf.int64)
    radius = tf.constant([1, 3, 3, 3, 3], tf.int32)
    # centre 1 reaches only 2; the others reach the whole run; the pad (-1) pairs with nothing.
    assert _pairs(ids, rows, radius, 3) == sorted(
        [(1, 2), (2, 1), (2, 3), (2, 4), (3, 1), (3, 2), (3, 4), (4, 1), (4, 2), (4, 3)])


def test_dynamic_window_keeps_distance_d_with_probability_w_minus_d_plus_1_over_w(topic_corpus):
    corpus = skipgram.load_corpus(topic_corpus)
    window = 4
    config = skipgram.TrainConfig(corpus=topic_corpus, output="unused", batch_size=20000, sample=0.0,
                                  window=window)
    batch = next(iter(skipgram.make_dataset(corpus, config, epoch=0)))
    masks = skipgram.context_masks(batch["rows"], batch["radius"], window)
    rows = batch["rows"].numpy()
    for o, mask in zip(skipgram.offsets(window), masks):
        same_run = skipgram.shift(batch["rows"], o, fill=-1).numpy() == rows
        share = mask.numpy().sum() / same_run.sum()
        assert share == pytest.approx((window - abs(o) + 1) / window, abs=0.03), o


def test_batches_keep_runs_whole_and_in_order(topic_corpus):
    corpus = skipgram.load_corpus(topic_corpus)
    config = skipgram.TrainConfig(corpus=topic_corpus, output="unused", batch_size=1000, sample=0.0)
    batch = next(iter(skipgram.make_dataset(corpus, config, epoch=0)))
    rows = batch["rows"].numpy()
    # a run is contiguous: once left, a run id never comes back
    changes = rows[np.flatnonzero(np.diff(rows)) + 1]
    assert len(set(changes.tolist())) == len(changes)
    assert batch["negatives"].shape == (1000, skipgram.noise_count(config)) == (1000, 6 * config.negatives)


def test_one_epoch_of_batches_accounts_for_every_corpus_word(topic_corpus):
    corpus = skipgram.load_corpus(topic_corpus)
    config = skipgram.TrainConfig(corpus=topic_corpus, output="unused", batch_size=300, negatives=3,
                                  sample=0.0)
    words = tokens = 0.0
    for batch in skipgram.make_dataset(corpus, config, epoch=0):
        assert batch["negatives"].shape[0] == batch["ids"].shape[0] <= 300
        words += float(batch["words"])
        tokens += batch["ids"].shape[0]
    assert tokens == corpus.total_words  # no subsampling: every token is a centre once
    assert words == pytest.approx(corpus.total_words, rel=1e-4)


def test_subsampling_drops_frequent_words_more(topic_corpus):
    corpus = skipgram.load_corpus(topic_corpus)
    config = skipgram.TrainConfig(corpus=topic_corpus, output="unused", batch_size=10**6, sample=1e-2)
    ids = next(iter(skipgram.make_dataset(corpus, config, epoch=0)))["ids"].numpy()
    kept = np.bincount(ids, minlength=len(corpus.vocab)) / corpus.counts
    expected = skipgram.keep_probabilities(corpus.counts, 1e-2)
    np.testing.assert_allclose(kept, expected, atol=0.05)
    assert kept[0] < 0.6  # the most frequent word loses a good share


def test_epochs_draw_differently_and_reproducibly(topic_corpus):
    corpus = skipgram.load_corpus(topic_corpus)
    config = skipgram.TrainConfig(corpus=topic_corpus, output="unused", batch_size=4096)
    first = lambda e: next(iter(skipgram.make_dataset(corpus, config, e)))["ids"].numpy()  # noqa: E731
    assert np.array_equal(first(0), first(0))
    assert not np.array_equal(first(0), first(1))


def _memory_epoch(memory, epoch):
    """The batches of one epoch of an InMemoryCorpus, drawn: a list of dicts of numpy."""
    return [{k: v.numpy() for k, v in memory.draw(b).items()} for b in memory.epoch(epoch)]


def test_the_corpus_in_memory_holds_every_record_and_each_epoch_trains_all_in_its_own_order(topic_corpus):
    corpus = skipgram.load_corpus(topic_corpus)
    config = skipgram.TrainConfig(corpus=topic_corpus, output="unused", sample=0.0, window=3)
    memory = skipgram.InMemoryCorpus(corpus, config, batch_size=700)
    first, second = _memory_epoch(memory, 0), _memory_epoch(memory, 1)
    for batches in (first, second):
        ids = np.concatenate([b["ids"] for b in batches])
        # No subsampling: every corpus token is a centre once an epoch, and counted as a word.
        np.testing.assert_array_equal(np.bincount(ids, minlength=len(corpus.vocab)), corpus.counts)
        assert sum(float(b["words"]) for b in batches) == corpus.total_words
        radius = np.concatenate([b["radius"] for b in batches])
        assert radius.min() == 1 and radius.max() == 3
        # A record's tokens stay together and in order: a record id never comes back.
        rows = np.concatenate([b["rows"] for b in batches])
        changes = rows[np.flatnonzero(np.diff(rows)) + 1]
        assert len(set(changes.tolist())) == len(changes) == len(set(rows.tolist())) - 1
        # The batches hold about batch_size tokens (whole records).
        assert np.median([len(b["ids"]) for b in batches]) == pytest.approx(700, rel=0.3)
    assert not np.array_equal(first[0]["rows"], second[0]["rows"])  # each epoch its own order
    # The same seed and epoch draw the same batches in a new process (a resumed run).
    again = _memory_epoch(skipgram.InMemoryCorpus(corpus, config, batch_size=700), 1)
    for a, b in zip(second, again):
        for key in ("ids", "rows", "radius"):
            np.testing.assert_array_equal(a[key], b[key])


def test_the_corpus_in_memory_is_read_as_the_window_files_hold_it(topic_corpus):
    corpus = skipgram.load_corpus(topic_corpus)
    config = skipgram.TrainConfig(corpus=topic_corpus, output="unused", sample=0.0)
    memory = skipgram.InMemoryCorpus(corpus, config, batch_size=100)
    memory.load()
    tokens, starts = memory.tokens.numpy(), memory.starts.numpy()
    records = [ids for read in skipgram.corpus_reads(corpus, config, 0)
               for ids in np.split(read["ids"].numpy(), np.flatnonzero(np.diff(read["records"].numpy())) + 1)]
    held = [tokens[a:b] for a, b in zip(starts[:-1], starts[1:])]
    assert sorted(map(tuple, held)) == sorted(map(tuple, records))


def test_each_pipeline_holds_its_own_share_of_the_corpus(topic_corpus):
    corpus = skipgram.load_corpus(topic_corpus)
    config = skipgram.TrainConfig(corpus=topic_corpus, output="unused", sample=0.0)
    shares = []
    for index in range(2):
        memory = skipgram.InMemoryCorpus(corpus, config, batch_size=100, pipeline=(index, 2))
        shares.append(np.concatenate([b["ids"] for b in _memory_epoch(memory, 0)]))
    assert min(len(s) for s in shares) > 0
    np.testing.assert_array_equal(np.bincount(np.concatenate(shares), minlength=len(corpus.vocab)), corpus.counts)


def test_drawing_from_memory_subsamples_frequent_words_as_word2vec(topic_corpus):
    corpus = skipgram.load_corpus(topic_corpus)
    config = skipgram.TrainConfig(corpus=topic_corpus, output="unused", sample=1e-2)
    memory = skipgram.InMemoryCorpus(corpus, config, batch_size=10**6)
    kept = sum(np.bincount(b["ids"], minlength=len(corpus.vocab)) for epoch in range(4)
               for b in _memory_epoch(memory, epoch)) / (4 * corpus.counts)
    np.testing.assert_allclose(kept, skipgram.keep_probabilities(corpus.counts, 1e-2), atol=0.05)
    assert kept[0] < 0.6


def test_draw_batch_refuses_records_and_tokens_outside_its_tables():
    tokens, starts, keep = np.array([0, 1, 2, 1], np.int32), np.array([0, 2, 4], np.int64), np.ones(3, np.float32)
    ids, rows, radius, words = kernels.draw_batch(tokens, starts, np.array([1, 0], np.int64), keep, 7, 2)
    np.testing.assert_array_equal(ids, [2, 1, 0, 1])
    np.testing.assert_array_equal(rows, [1, 1, 0, 0])
    assert float(words) == 4 and set(radius.numpy()) <= {1, 2}
    # A record draws the same whatever batch it is in (its draws follow from the seed and
    # the record), and differently under another seed.
    many = np.arange(2000, dtype=np.int32) % 3
    tens = np.arange(0, 2001, 10, dtype=np.int64)  # 200 records of 10 tokens
    half = np.full(3, 0.5, np.float32)
    together = kernels.draw_batch(many, tens, np.arange(200, dtype=np.int64), half, 7, 5)
    for record in (0, 77, 199):
        alone = kernels.draw_batch(many, tens, np.array([record], np.int64), half, 7, 5)
        in_batch = together[1].numpy() == record
        for a, b in zip(alone[:3], together[:3]):
            np.testing.assert_array_equal(a.numpy(), b.numpy()[in_batch])
    other = kernels.draw_batch(many, tens, np.arange(200, dtype=np.int64), half, 8, 5)
    assert not np.array_equal(together[1].numpy(), other[1].numpy())
    assert 0.45 < len(together[0]) / 2000 < 0.55
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"records\[0\] = 2 is outside \[0, 2\)"):
        kernels.draw_batch(tokens, starts, np.array([2], np.int64), keep, 7, 2)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"tokens\[1\] = 5 is outside the vocabulary"):
        kernels.draw_batch(np.array([0, 5, 2, 1], np.int32), starts, np.array([0], np.int64), keep, 7, 2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="are not a range of the 4 tokens"):
        kernels.draw_batch(tokens, np.array([0, 3, 9], np.int64), np.array([1], np.int64), keep, 7, 2)


def test_only_a_corpus_within_the_memory_budget_is_kept_in_memory(topic_corpus, monkeypatch):
    corpus = skipgram.load_corpus(topic_corpus)
    assert skipgram.InMemoryCorpus.fits(corpus)
    records = corpus.info["counts"]["window_records"]
    monkeypatch.setattr(skipgram, "_CACHE_BYTES", 4 * corpus.total_words + 8 * records - 1)
    assert not skipgram.InMemoryCorpus.fits(corpus)


@pytest.mark.parametrize("flag, value, message", [
    ("--dim", "0", "--dim must be >= 1"),
    ("--epochs", "0", "--epochs must be >= 1"),
    ("--learning-rate", "0", "--learning-rate must be > 0"),
    ("--worker-rate-scale", "0", "--worker-rate-scale must be > 0"),
    ("--strategy", "tpu", "--strategy tpu needs --tpu ADDRESS"),
    ("--checkpoint-every-steps", "0", "--checkpoint-every-steps must be >= 1, got 0"),
    ("--sample", "1", r"--sample must be in \[0, 1\), got 1.0"),
])
def test_bad_flags_fail_before_work(tmp_path, flag, value, message):
    with pytest.raises(ValueError, match=message):
        train_job.parse_args(["--corpus", "c", "--output", str(tmp_path / "o"), flag, value])


def test_corpus_without_completed_is_refused(tmp_path, topic_corpus):
    copy = str(tmp_path / "corpus")
    shutil.copytree(topic_corpus, copy)
    os.remove(os.path.join(copy, "COMPLETED"))
    with pytest.raises(FileNotFoundError, match="no COMPLETED marker"):
        _train(copy, str(tmp_path / "emb"))


# ------------------------------------------------------------------- end to end


def test_train_export_and_serve_from_saved_model_alone(tmp_path, topic_corpus):
    corpus_copy = str(tmp_path / "corpus")
    shutil.copytree(topic_corpus, corpus_copy)
    out = _train(corpus_copy, str(tmp_path / "emb"))
    vectors = WordVectors.load(out)
    assert _topic_precision(vectors) >= 0.9
    info = outputs.read_info(out)
    assert info["training"]["words"] == pytest.approx(3 * 18000, rel=1e-3)
    assert info["training"]["learning_rate"] == pytest.approx(skipgram.DEFAULT_LEARNING_RATE["skipgram"])
    assert not os.path.exists(out + ".checkpoints")  # removed once complete

    # word2vec text format loads in gensim with the same numbers.
    from gensim.models import KeyedVectors  # pylint: disable=import-outside-toplevel
    kv = KeyedVectors.load_word2vec_format(os.path.join(out, schema.WORD2VEC_TXT))
    assert kv.index_to_key == vectors.index_to_key
    np.testing.assert_allclose(kv.vectors, vectors.vectors, rtol=1e-4, atol=1e-6)
    with open(os.path.join(out, schema.PROJECTOR_METADATA_TSV), encoding="utf-8") as f:
        assert f.readline() == "word\tcount\n"
    assert np.loadtxt(os.path.join(out, schema.PROJECTOR_VECTORS_TSV)).shape == vectors.vectors.shape

    # Serve from the SavedModel alone: the corpus and the vectors files are gone.
    saved = str(tmp_path / "served")
    shutil.copytree(os.path.join(out, schema.SAVED_MODEL_DIR), saved)
    expected_cat, expected_dog = vectors["cat"].copy(), vectors["dog"].copy()
    shutil.rmtree(corpus_copy)
    shutil.rmtree(out)
    model = tf.saved_model.load(saved)
    result = model.signatures["serving_default"](tf.constant(["Cat, DOG!", "zebra"]))
    np.testing.assert_allclose(result[schema.SERVING_MEAN].numpy()[0], (expected_cat + expected_dog) / 2,
                               rtol=1e-5, atol=1e-6)
    assert result[schema.SERVING_MASK].numpy().tolist() == [[True, True], [False, False]]
    np.testing.assert_allclose(result[schema.SERVING_MEAN].numpy()[1], 0.0)


def test_killed_run_resumes_from_checkpoint(tmp_path, topic_corpus):
    out = str(tmp_path / "emb")
    argv = [sys.executable, "-m", "jobs.train", "--corpus", topic_corpus, "--output", out, "--dim", "32",
            "--epochs", "40", "--batch-size", "256", "--checkpoint-every-steps", "5"]
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt_dir = out + ".checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if tf.train.latest_checkpoint(ckpt_dir) and int(tf.train.latest_checkpoint(ckpt_dir).split("-")[-1]) >= 20:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "training ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = int(tf.train.latest_checkpoint(ckpt_dir).split("-")[-1])
    assert not os.path.exists(os.path.join(out, "COMPLETED"))

    log = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, check=True).stderr
    assert f"resumed from {ckpt_dir}/ckpt-{killed_at}" in log
    info = outputs.read_info(out)
    # The resumed process trained only what was left: the total is one full run.
    assert info["training"]["words"] < 40 * 18000
    vectors = WordVectors.load(out)
    assert vectors.index_to_key == [t for t, _ in fixtures.read_vocab(topic_corpus)]
    assert _topic_precision(vectors) >= 0.9


# ---------------------------------------------------------------------- vectors


def test_word_vectors_lookup_similarity_and_round_trips(tmp_path):
    rows = np.array([[1, 0], [0.9, 0.1], [0, 1], [-1, 0]], dtype=np.float32)
    v = WordVectors(["a", "b", "c", "d"], rows, [4, 3, 2, 1])
    assert [w for w, _ in v.most_similar("a", topn=2)] == ["b", "c"]
    assert v.most_similar("a", topn=1, restrict_vocab=3)[0][0] == "b"
    with pytest.raises(KeyError, match="'zebra' is not in the vocabulary"):
        v["zebra"]  # pylint: disable=pointless-statement
    v.save(str(tmp_path))
    again = WordVectors.load(str(tmp_path))
    assert again.index_to_key == v.index_to_key and again.counts.tolist() == [4, 3, 2, 1]
    v.save_word2vec_format(str(tmp_path / "w2v.txt"))
    loaded = WordVectors.load_word2vec_format(str(tmp_path / "w2v.txt"))
    np.testing.assert_allclose(loaded.vectors, rows)


# -------------------------------------------------------------------- evaluation


def test_analogy_accuracy_counts_sections_and_coverage(tmp_path):
    # king - man + woman = queen holds exactly; the second question has an unknown word.
    words = ["man", "woman", "king", "queen", "apple"]
    rows = np.array([[1, 0, 0], [1, 1, 0], [1, 0, 1], [1, 1, 1], [0, -1, 0]], dtype=np.float32)
    v = WordVectors(words, rows)
    path = fixtures.write(str(tmp_path / "q.txt"),
                          ": family\nman woman king queen\nman woman king princess\n: fruit\nman woman king apple\n")
    result = evaluate.analogy_accuracy(v, evaluate.read_analogies(path))
    assert result["sections"]["family"] == {"correct": 1, "total": 1, "questions": 2, "accuracy": 1.0}
    assert result["sections"]["fruit"]["correct"] == 0
    assert result["coverage"] == pytest.approx(2 / 3)
    assert result["accuracy"] == pytest.approx(0.5)


def test_spearman_matches_scipy_with_ties():
    from scipy.stats import spearmanr  # pylint: disable=import-outside-toplevel
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, 60).astype(float)
    b = a + rng.normal(0, 2, 60)
    assert evaluate.spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-9)


def test_similarity_reads_wordsim_format_and_reports_coverage(tmp_path):
    v = WordVectors(["tiger", "cat", "car"], np.array([[1, 0.1], [1, 0], [0, 1]], dtype=np.float32))
    path = fixtures.write(str(tmp_path / "ws.tsv"),
                          "# comment\ntiger\tcat\t7.35\ncat car 0.5\ntiger\tcar\t1.0\nzebra\tcat\t5\n")
    result = evaluate.similarity_spearman(v, evaluate.read_similarity(path))
    assert result["covered"] == 3 and result["pairs"] == 4
    assert result["spearman"] == pytest.approx(1.0)


def test_evaluate_refuses_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="--analogies .*nope.txt does not exist"):
        evaluate.read_analogies(str(tmp_path / "nope.txt"))


MIRRORED_SCRIPT = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from jobs import train as train_job
train_job.run(sys.argv[1:])
"""


def test_mirrored_strategy_over_two_replicas(tmp_path, topic_corpus):
    """MirroredStrategy on two logical CPU devices: the tf kernel; every replica applies
    every replica's updates, exchanged as their factors, so the copies stay identical."""
    out = str(tmp_path / "emb")
    subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT, "--corpus", topic_corpus, "--output", out,
                    "--strategy", "mirrored", "--dim", "32", "--epochs", "3", "--batch-size", "512"],
                   cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), check=True, capture_output=True)
    training = outputs.read_info(out)["training"]
    assert (training["replicas"], training["kernel"]) == (2, "tf")
    assert training["replica_max_difference"] == 0.0
    # Identical copies learn as one process: no workers' rate scale.
    assert training["learning_rate"] == pytest.approx(skipgram.DEFAULT_LEARNING_RATE["skipgram"])
    assert training["words"] == pytest.approx(3 * 18000, rel=1e-3)
    # Per step, each replica's 256 centres as factors (1 + 30 + 1 + 32 + 1 + 10 + 30 numbers
    # each: test_scale spells them out); far below two dense tables a replica.
    assert training["bytes_exchanged"] / training["steps"] == 2 * (256 * 105 * 4 + 12)
    assert training["bytes_exchanged_per_word"] == pytest.approx(training["bytes_exchanged"] / training["words"])
    assert _topic_precision(WordVectors.load(out)) >= 0.9


def _free_port():
    import socket  # pylint: disable=import-outside-toplevel
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_workers(*flags, timeout=300, script=None, count=2):
    """`python -m jobs.train FLAGS --strategy multiworker` (or `python -c SCRIPT FLAGS`) as
    two workers (or `count`) on localhost.

    Returns:
      (their exit codes, their stderr, their stdout), worker 0 (the chief) first.
    """
    import json  # pylint: disable=import-outside-toplevel
    workers = [f"localhost:{_free_port()}" for _ in range(count)]
    argv = ([sys.executable, "-c", script, *flags] if script is not None
            else [sys.executable, "-m", "jobs.train", *flags, "--strategy", "multiworker"])
    procs = []
    for index in range(count):
        env = dict(os.environ, PYTHONPATH=REPO, TF_CONFIG=json.dumps(
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}))
        procs.append(subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    try:
        outs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            p.kill()
    return [p.returncode for p in procs], [err for _, err in outs], [out for out, _ in outs]


def test_multi_worker_training_with_two_local_workers(tmp_path, topic_corpus):
    """MultiWorkerMirroredStrategy: two processes on localhost, configured by TF_CONFIG, each
    training its own tables with the fused kernel and exchanging them (trainer/exchange.py)."""
    out = str(tmp_path / "emb")
    # Rounds of 2,000 words a worker: every part of a round trains (a longer round would
    # run out of this corpus's 9,000 words a worker in its first part).
    codes, logs, _ = run_two_workers("--corpus", topic_corpus, "--output", out, "--dim", "32", "--epochs", "3",
                                     "--batch-size", "512", "--sync-every-words", "2000")
    assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert "the chief writes" in logs[1]
    training = outputs.read_info(out)["training"]
    # The fused kernel in each worker, the tables exchanged every round.
    assert (training["replicas"], training["kernel"]) == (2, "fused")
    assert training["exchanges"] >= 3
    # Workers that add up changes made apart start at --worker-rate-scale x the rate.
    assert training["learning_rate"] == pytest.approx(
        skipgram.DEFAULT_LEARNING_RATE["skipgram"] * skipgram.DEFAULT_WORKER_RATE_SCALE)
    assert training["hot_exchanges"] == (exchange.HOT_EXCHANGES - 1) * training["exchanges"]
    tables = 27 * 32 * 2  # float16 changes of both tables, each worker
    assert training["bytes_exchanged"] == 2 * (training["exchanges"] * (2 * tables + 7 * 8)
                                               + training["hot_exchanges"] * 2 * tables)
    # What sending only the changed rows would have cost: each row with its id, at most all rows.
    # (The hot rows are all 27 here: a full exchange sees what the round's last part changed.)
    assert 0 < training["rows_changed"] <= 2 * 2 * 27 * training["exchanges"]
    assert training["touched_rows_bytes"] == (training["rows_changed"] * (4 + 32 * 2)
                                              + 2 * training["exchanges"] * 7 * 8
                                              + training["hot_exchanges"] * 2 * 2 * tables)
    # Both workers end with the same tables.
    assert f"tables sha256 {training['tables_sha256']}" in logs[1]
    # Each worker read half the shards; the exchanged count is one pass over the corpus.
    assert training["words"] == pytest.approx(3 * 18000, rel=1e-3)
    assert _topic_precision(WordVectors.load(out)) >= 0.9
    assert not os.path.exists(out + ".checkpoints")


def test_more_fused_workers_than_the_exchange_keeps_stable_are_refused(tmp_path, topic_corpus):
    """Three fused-kernel workers: each refuses before training (their summed changes of
    frequent rows diverge, trainer/exchange.py MAX_FUSED_WORKERS), naming the way out."""
    out = str(tmp_path / "emb")
    codes, logs, _ = run_two_workers("--corpus", topic_corpus, "--output", out, "--dim", "32", "--epochs", "1",
                                     "--batch-size", "512", count=3)
    assert codes == [2, 2, 2], logs[0][-3000:]
    for log in logs:
        assert "fused kernel trains on at most 2 workers, and TF_CONFIG names 3" in log
        assert "--kernel tf" in log
    assert not os.path.exists(out) and not os.path.exists(out + ".checkpoints")
