"""The trainer's other models through the train job: CBOW and fastText subwords (the ops
themselves are checked against numpy in test_kernel_models.py), their exports (composed
vectors, the n-gram rows, word2vec binary, a SavedModel that hashes n-grams in its graph),
the refusals of the tf kernel, and checkpoints of another model."""

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from core import outputs
from jobs import evaluate as evaluate_job
from jobs import train as train_job
from schemas import embeddings as schema
from tests import fixtures
from tests.test_trainer import (
    _topic_precision,
    _train,
    run_two_workers,
    topic_corpus,  # noqa: F401  pylint: disable=unused-import  (fixture)
)
from trainer import formats, skipgram, subwords
from trainer.vectors import WordVectors

SUBWORDS = ["--subwords", "--min-n", "3", "--max-n", "5", "--buckets", "1000"]
SPEC = subwords.SubwordSpec(3, 5, 1000)
# Words the topic corpus never holds: inflections and a compound of its words, and words
# beyond ASCII (the tokenizer lower-cases them and keeps them whole).
UNSEEN = ["horses", "hammers", "redgreen", "naïve", "日本語", "café"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, topic_corpus):  # noqa: F811
    """{flags: output} of the train job for each model, trained once for this module."""
    root = tmp_path_factory.mktemp("models")
    found = {}
    for name, flags in {"cbow": ["--model", "cbow"], "subwords": SUBWORDS,
                        "cbow-subwords": ["--model", "cbow", *SUBWORDS]}.items():
        found[name] = _train(topic_corpus, str(root / name), *flags)
    return found


@pytest.fixture(scope="module")
def moved_subword_output(tmp_path_factory, topic_corpus):  # noqa: F811
    """A --subwords output copied elsewhere, its corpus and everything else deleted."""
    root = tmp_path_factory.mktemp("moved")
    corpus_copy = str(root / "corpus")
    shutil.copytree(topic_corpus, corpus_copy)
    out = _train(corpus_copy, str(root / "emb"), *SUBWORDS)
    moved = str(root / "moved")
    shutil.copytree(out, moved)
    assert not os.path.exists(out + ".checkpoints")
    shutil.rmtree(corpus_copy)
    shutil.rmtree(out)
    return moved


def _ngram_mean(vectors, word):
    """A word's vector from its n-gram rows, computed here from trainer/subwords.py's rule."""
    return vectors.ngram_vectors[subwords.ngram_buckets(word, *SPEC)].mean(axis=0)


# --------------------------------------------------------------------- training


@pytest.mark.parametrize("name, family, spec", [("cbow", "cbow", None), ("subwords", "skipgram", SPEC),
                                                ("cbow-subwords", "cbow", SPEC)])
def test_each_model_learns_the_topics_and_records_itself(runs, name, family, spec):
    out = runs[name]
    vectors = WordVectors.load(out)
    assert _topic_precision(vectors) >= 0.9, name
    info = outputs.read_info(out)
    assert info["model"] == {"family": family, "subwords": None if spec is None else spec._asdict()}
    assert info["training"]["kernel"] == "fused"
    assert info["parameters"]["learning_rate"] == (0.05 if family == "cbow" else 0.025)
    assert info["training"]["words"] == pytest.approx(3 * 18000, rel=1e-3)
    assert vectors.subwords == spec
    assert os.path.exists(os.path.join(out, schema.SUBWORD_VECTORS_NPY)) == (spec is not None)


def test_exported_vectors_of_subwords_are_composed_from_the_rows():
    """vectors.npy holds each word's mean of its own row and its n-gram rows (fastText's)."""
    vocab = ["cat", "cats", "a"]
    spec = subwords.SubwordSpec(2, 3, 7)
    table = subwords.ngram_table(vocab, *spec)
    inputs = np.random.default_rng(0).normal(size=(len(vocab) + spec.buckets, 4)).astype(np.float32)
    corpus = skipgram.Corpus("c", vocab, np.array([3, 2, 1]), [], 5, 1e-3, {})
    vectors = skipgram.trained_vectors(corpus, inputs, spec, table)
    for w, word in enumerate(vocab):
        rows = [w] + [len(vocab) + b for b in subwords.ngram_buckets(word, *spec)]
        np.testing.assert_allclose(vectors[word], inputs[rows].mean(axis=0), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(vectors.ngram_vectors, inputs[len(vocab):])
    np.testing.assert_allclose(vectors["dog"], inputs[[3 + b for b in subwords.ngram_buckets("dog", *spec)]].mean(0),
                               rtol=1e-5, atol=1e-7)


def test_cbow_trains_on_two_workers(tmp_path, topic_corpus):  # noqa: F811
    out = str(tmp_path / "emb")
    codes, logs, _ = run_two_workers("--corpus", topic_corpus, "--output", out, "--dim", "32", "--epochs", "3",
                                     "--batch-size", "512", "--model", "cbow")
    assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    training = outputs.read_info(out)["training"]
    assert (training["replicas"], training["kernel"]) == (2, "fused") and training["exchanges"] >= 3
    assert f"tables sha256 {training['tables_sha256']}" in logs[1]  # both workers end equal
    assert outputs.read_info(out)["model"]["family"] == "cbow"
    assert _topic_precision(WordVectors.load(out)) >= 0.9


# ------------------------------------------------------------------ subwords served


@pytest.mark.parametrize("spec", [SPEC, subwords.SubwordSpec(1, 3, 1000), subwords.SubwordSpec(2, 6, 7)])
def test_ngram_hashing_in_the_graph_is_trainer_subwords_rule(spec):
    words = ["where", "a", "cat", "naïve", "café", "日本語", "straße", "emoji🙂", ""]
    found = subwords.ngram_buckets_tf(tf.constant(words), spec).to_list()
    for word, buckets in zip(words, found):
        assert sorted(buckets) == sorted(subwords.ngram_buckets(word, *spec)), (word, spec)


def test_unseen_words_get_their_ngram_mean_in_word_vectors_and_the_saved_model(moved_subword_output):
    vectors = WordVectors.load(moved_subword_output)
    assert vectors.subwords == SPEC and vectors.ngram_vectors.shape == (1000, 32)
    for word in UNSEEN:
        assert word not in vectors  # the vocabulary stays the trained words
        np.testing.assert_allclose(vectors[word], _ngram_mean(vectors, word), rtol=1e-6)
    assert vectors.most_similar("horses", topn=3)  # an unseen word may be a query

    model = tf.saved_model.load(os.path.join(moved_subword_output, schema.SAVED_MODEL_DIR))
    result = model.signatures["serving_default"](tf.constant([" ".join(UNSEEN).upper(), "Cat, DOG!"]))
    assert result[schema.SERVING_MASK].numpy().tolist() == [[True] * 6, [True, True] + [False] * 4]
    assert (result[schema.SERVING_TOKEN_IDS].numpy()[0] == len(vectors)).all()  # every one out of vocabulary
    served = result[schema.SERVING_VECTORS].numpy()
    for i, word in enumerate(UNSEEN):
        np.testing.assert_allclose(served[0, i], vectors[word], rtol=1e-5, atol=1e-7, err_msg=word)
    np.testing.assert_allclose(served[1, :2], [vectors["cat"], vectors["dog"]], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(result[schema.SERVING_MEAN].numpy()[0], served[0].mean(axis=0), rtol=1e-5, atol=1e-7)


def test_an_unseen_inflection_lands_near_its_topic(moved_subword_output):
    vectors = WordVectors.load(moved_subword_output)
    topic_of = {w: t for t, words in fixtures.TOPICS.items() for w in words}
    unseen = {"horses": "animals", "hammers": "tools", "drills": "tools", "rabbits": "animals"}
    hits = sum(topic_of.get(vectors.most_similar(w, topn=1)[0][0]) == t for w, t in unseen.items())
    assert hits >= 3, [(w, vectors.most_similar(w, topn=3)) for w in unseen]


def test_without_subwords_an_unknown_word_is_a_key_error(runs):
    vectors = WordVectors.load(runs["cbow"])
    assert vectors.subwords is None and vectors.ngram_vectors is None
    with pytest.raises(KeyError, match="'horses' is not in the vocabulary"):
        vectors["horses"]  # pylint: disable=pointless-statement
    with pytest.raises(KeyError, match="'horses' is not in the vocabulary"):
        vectors.most_similar("horses")


# ------------------------------------------------------------------------ exports


def test_word2vec_binary_export_round_trips(runs):
    from gensim.models import KeyedVectors  # pylint: disable=import-outside-toplevel

    out = runs["cbow-subwords"]
    vectors = WordVectors.load(out)
    kv = KeyedVectors.load_word2vec_format(os.path.join(out, schema.WORD2VEC_BIN), binary=True)
    assert kv.index_to_key == vectors.index_to_key
    np.testing.assert_array_equal(kv.vectors, vectors.vectors)  # float32 bytes: exact
    with formats.VectorReader(os.path.join(out, schema.WORD2VEC_BIN), "word2vec-binary") as reader:
        rows = list(reader)
    assert [r.word for r in rows] == vectors.index_to_key
    np.testing.assert_array_equal(np.stack([r.vector for r in rows]), vectors.vectors)


def test_evaluate_copies_the_model_into_its_metrics(tmp_path, runs):
    questions = fixtures.write(str(tmp_path / "q.txt"), ": animals\ncat dog horse cow\n")
    out = str(tmp_path / "eval")
    evaluate_job.run(["--embeddings", runs["subwords"], "--analogies", questions, "--output-dir", out])
    with open(os.path.join(out, "metrics.json"), encoding="utf-8") as f:
        metrics = json.load(f)
    assert metrics["model"] == {"family": "skipgram", "subwords": SPEC._asdict()}


# ------------------------------------------------------------------------ refusals


@pytest.mark.parametrize("flags, named", [
    (["--model", "cbow", "--kernel", "tf"], "--model cbow train only with the fused CPU kernel, but --kernel tf"),
    (["--subwords", "--kernel", "tf"], "--subwords train only with the fused CPU kernel, but --kernel tf"),
    (["--model", "cbow", "--subwords", "--strategy", "tpu", "--tpu", "t"],
     "--model cbow and --subwords train only with the fused CPU kernel, but --strategy tpu"),
])
def test_the_tf_kernel_refuses_cbow_and_subwords_before_work(tmp_path, flags, named):
    with pytest.raises(ValueError, match=named) as caught:
        train_job.parse_args(["--corpus", "c", "--output", str(tmp_path / "o"), *flags])
    assert "the accelerator path (GPUs, TPUs, several replicas in one process) is skip-gram" in str(caught.value)


def test_a_strategy_that_takes_the_tf_kernel_refuses_cbow(tmp_path):
    config = skipgram.TrainConfig(corpus="c", output=str(tmp_path / "o"), model="cbow")
    gpu = tf.distribute.OneDeviceStrategy("/gpu:0")  # a GPU takes the tf kernel
    with pytest.raises(ValueError, match="--model cbow train only with the fused CPU kernel, but the "
                                         "strategy OneDeviceStrategy on .*GPU:0 trains with the tf kernel"):
        skipgram.resolve_kernel("auto", gpu, config)
    plain = skipgram.TrainConfig(corpus="c", output=str(tmp_path / "o"))
    assert skipgram.resolve_kernel("auto", gpu, plain) == "tf"


def test_subwords_on_several_workers_are_refused(tmp_path):
    with pytest.raises(ValueError, match="--subwords is not trained with --strategy multiworker"):
        train_job.parse_args(["--corpus", "c", "--output", str(tmp_path / "o"), "--subwords",
                              "--strategy", "multiworker"])


@pytest.mark.parametrize("flags, difference", [
    (["--model", "cbow"], "--model: theirs is skipgram, this run's cbow"),
    (SUBWORDS, "--subwords: theirs is False, this run's True"),
])
def test_checkpoints_of_another_model_are_refused(tmp_path, topic_corpus, flags, difference):  # noqa: F811
    out = str(tmp_path / "emb")
    small = ["--corpus", topic_corpus, "--output", out, "--dim", "8", "--epochs", "1", "--batch-size", "256"]
    skipgram.train(train_job.parse_args([*small, "--max-steps", "2", "--checkpoint-every-steps", "1"]))
    with pytest.raises(ValueError, match="holds the checkpoints of another training run") as caught:
        train_job.run([*small, *flags])
    assert difference in str(caught.value)


def test_checkpoints_of_other_buckets_are_refused_and_old_fingerprints_mean_skipgram(tmp_path, topic_corpus):  # noqa: F811
    out = str(tmp_path / "emb")
    small = ["--corpus", topic_corpus, "--output", out, "--dim", "8", "--epochs", "1", "--batch-size", "256",
             "--checkpoint-every-steps", "1"]
    skipgram.train(train_job.parse_args([*small, *SUBWORDS, "--max-steps", "2"]))
    with pytest.raises(ValueError, match="--buckets: theirs is 1000, this run's 2000"):
        train_job.run([*small, *SUBWORDS[:-1], "2000"])
    # Checkpoints of a skip-gram run from before the model was fingerprinted resume.
    shutil.rmtree(out + ".checkpoints")
    skipgram.train(train_job.parse_args([*small, "--max-steps", "2"]))
    path = os.path.join(out + ".checkpoints", skipgram.FINGERPRINT_FILE)
    with open(path, encoding="utf-8") as f:
        recorded = json.load(f)
    for key in skipgram.FINGERPRINT_DEFAULTS:
        del recorded["parameters"][key]
    with open(path, "w", encoding="utf-8") as f:
        json.dump(recorded, f)
    assert skipgram.train(train_job.parse_args([*small, "--max-steps", "3"]))[1]["steps"] == 1
