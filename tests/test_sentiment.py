"""Sentiment job: readers on tiny files, the Beam job (ids are the corpus transform's), the
model's pieces, cross-validation, and an end-to-end run on a tiny corpus where pretrained
embeddings must beat scratch, served from its SavedModel alone."""

import json
import logging
import os
import shutil

import apache_beam as beam
import keras
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from embedflow import cli
from jobs import corpus as corpus_job
from jobs import sentiment as sentiment_job
from pipelines import sentiment as job
from schemas import artifacts as artifact_names
from schemas import sentiment as schema
from tests import fixtures
from trainer import sentiment as trainer
from jobs import train as train_job
from trainer.vectors import WordVectors

LABELS = ("neg", "pos")
# Positive texts talk about animals, negative ones about tools. Training texts use the
# first four words of each topic and eval texts the last four, so only embeddings that
# place "cow" near "cat" (learned from the corpus) can get eval texts right.
POSITIVE, NEGATIVE = fixtures.TOPICS["animals"], fixtures.TOPICS["tools"]


@pytest.fixture(scope="module")
def topic_embeddings(tmp_path_factory):
    """(corpus dir, embeddings dir) trained on the topic corpus, as in test_trainer."""
    root = tmp_path_factory.mktemp("sentiment")
    text = fixtures.write(str(root / "in" / "topics.txt"), fixtures.topic_corpus())
    corpus_dir = corpus_job.run(["--input", text, "--output", str(root / "corpus"),
                                 "--min-count", "1", "--num-shards", "2"])
    embeddings_dir = train_job.run(["--corpus", corpus_dir, "--output", str(root / "embeddings"),
                                   "--dim", "32", "--epochs", "3", "--batch-size", "512"])
    return corpus_dir, embeddings_dir


def topic_texts(words_by_label, count, seed):
    """[(label, text)]: `count` texts a label, 3 to 6 of its words with fillers and noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for label, words in words_by_label.items():
        for _ in range(count):
            tokens = [words[i] for i in rng.integers(len(words), size=rng.integers(3, 7))]
            tokens.insert(int(rng.integers(len(tokens) + 1)), ["The", "and", "a"][rng.integers(3)])
            rows.append((label, " ".join(tokens) + rng.choice([".", "!", ",", ""])))
    return rows


def write_tsv(path, rows, header=("label", "text")):
    lines = (["\t".join(header)] if header else []) + [f"{l}\t{t}" for l, t in rows]
    return fixtures.write(str(path), "\n".join(lines) + "\n")


def expected_ids(corpus_dir, tokens):
    """Ids of already-tokenized words looked up by hand in vocab.tsv (OOV: vocab_size)."""
    vocab = {t: i for i, (t, _) in enumerate(fixtures.read_vocab(corpus_dir))}
    return [vocab.get(t, len(vocab)) for t in tokens]


def checked_config(**values):
    """A SentimentConfig built as the flags build it, errors naming the flags."""
    return trainer.SentimentConfig.check(values, trainer.SentimentConfig.flag_of)


class Skips(list):
    def __call__(self, reason):
        self.append(reason)


# ----------------------------------------------------------------------------- readers


def test_polarity_reader_is_latin1_one_text_a_line():
    skips = Skips()
    # 0x85 is an ellipsis in Windows-1252; Latin-1 makes it U+0085, which str.splitlines
    # would wrongly take for a line end.
    data = b"caf\xe9 au lait , good\r\nbad \x85 movie\n   \n"
    assert list(job.read_polarity(data, "latin-1", skips)) == ["caf\xe9 au lait , good",
                                                               "bad \x85 movie"]
    assert skips == ["empty"]


def test_table_reader_finds_named_columns_and_counts_skips():
    skips = Skips()
    data = ("text\tlabel\n"
            "a \"quoted\" fine film\tPOS\n"  # TSV has no quoting: the quotes are text
            "dull\t0\n"
            "meh\tmaybe\n"  # unknown label
            "\tpos\n"  # empty text
            "lonely cell\n").encode("utf-8") + b"bad \xff byte\tpos\n"
    rows = list(job.read_table(data, delimiter="\t", label_column="label", text_column="text",
                               labels=LABELS, encoding="utf-8", name="x.tsv", skip=skips))
    assert rows == [(1, 'a "quoted" fine film'), (0, "dull")]
    assert sorted(skips) == ["empty", "malformed", "undecodable", "unknown_label"]


@pytest.mark.parametrize("first_row, expected", [
    ("sentiment,review\n", [(1, "great, really"), (0, "bad")]),  # header: label cell no label
    ("", [(1, "great, really"), (0, "bad")]),
    ("neg,first row is data\n", [(0, "first row is data"), (1, "great, really"), (0, "bad")]),
])
def test_csv_reader_with_index_columns_detects_a_header(first_row, expected):
    data = (first_row + 'pos,"great, really"\nneg,bad\n').encode("utf-8")
    rows = list(job.read_table(data, delimiter=",", label_column="0", text_column="1",
                               labels=LABELS, encoding="utf-8", name="x.csv", skip=Skips()))
    assert rows == expected


def test_table_reader_names_the_file_when_a_named_column_is_missing():
    with pytest.raises(ValueError, match=r"x\.tsv: no text column 'review' in its first row "
                                         r"\('label', 'text'\); name it with --text-column NAME"):
        list(job.read_table(b"label\ttext\npos\tgood\n", delimiter="\t", label_column="label",
                            text_column="review", labels=LABELS, encoding="utf-8", name="x.tsv",
                            skip=Skips()))


@pytest.mark.parametrize("header", ["sentiment\tsentence", "Sentence\tPolarity", "review\tlabel",
                                    "id\tcontent\tclass"])
def test_common_tsv_headers_need_no_column_flags(header):
    names = [c.lower() for c in header.split("\t")]
    label_at = next(i for i, c in enumerate(names) if c in ("sentiment", "polarity", "label", "class"))
    rows = [["0"] * len(names), ["0"] * len(names)]
    for row, (label, text) in zip(rows, (("pos", "good fun"), ("neg", "dull"))):
        row[label_at] = label
        row[next(i for i, c in enumerate(names) if i != label_at and c != "id")] = text
    data = (header + "\n" + "".join("\t".join(r) + "\n" for r in rows)).encode()
    got = list(job.read_table(data, delimiter="\t", label_column="label", text_column="text",
                              labels=LABELS, encoding="utf-8", name="x.tsv", skip=Skips()))
    assert got == [(1, "good fun"), (0, "dull")]


def test_a_header_with_two_text_like_columns_asks_which():
    with pytest.raises(ValueError, match=r"several text columns \(review, sentence\): choose one with "
                                         r"--text-column NAME"):
        list(job.read_table(b"label\treview\tsentence\npos\ta\tb\n", delimiter="\t",
                            label_column="label", text_column="text", labels=LABELS,
                            encoding="utf-8", name="x.tsv", skip=Skips()))


def test_label_cells_name_a_class_or_give_its_index():
    assert [job.label_index(c, LABELS) for c in ("neg", " POS ", "1", "0", "2", "good", "")] \
        == [0, 1, 1, 0, None, None, None]


def test_sources_of_each_format_and_their_errors(tmp_path):
    fixtures.write(str(tmp_path / "pol" / "rt-polarity.pos"), b"good\n")
    fixtures.write(str(tmp_path / "pol" / "rt-polarity.neg"), b"bad\n")
    fixtures.write(str(tmp_path / "pol" / "README"), b"not read\n")
    sources, _ = job.list_sources([str(tmp_path / "pol")], "polarity", schema.TRAIN, "--input", LABELS)
    assert [(os.path.basename(s.path), s.label) for s in sources] == [
        ("rt-polarity.neg", "neg"), ("rt-polarity.pos", "pos")]
    with pytest.raises(ValueError, match="must end in .pos or .neg"):
        job.list_sources([str(tmp_path / "pol" / "README")], "polarity", schema.TRAIN, "--input", LABELS)
    with pytest.raises(ValueError, match="label 'neg' is not one of --labels bad,good"):
        job.list_sources([str(tmp_path / "pol")], "polarity", schema.TRAIN, "--input", ("bad", "good"))

    fixtures.write(str(tmp_path / "docs" / "pos" / "1.txt"), b"lovely\n")
    fixtures.write(str(tmp_path / "docs" / "Neg" / "2.txt"), b"awful\n")
    sources, _ = job.list_sources([str(tmp_path / "docs")], "folders", schema.EVAL, "--eval-input", LABELS)
    assert [(s.split, s.label) for s in sources] == [(schema.EVAL, "neg"), (schema.EVAL, "pos")]
    fixtures.write(str(tmp_path / "docs" / "unsup" / "3.txt"), b"?\n")
    with pytest.raises(ValueError, match="subfolder 'unsup' is not one of --labels"):
        job.list_sources([str(tmp_path / "docs")], "folders", schema.TRAIN, "--input", LABELS)
    with pytest.raises(FileNotFoundError, match="matches no file"):
        job.list_sources([str(tmp_path / "none*.tsv")], "tsv", schema.TRAIN, "--input", LABELS)


def test_bundled_polarity_sample_reads_every_sentence():
    sample = os.path.join(os.path.dirname(os.path.dirname(__file__)), "sample", "sentiment",
                          "rt-polarity")
    sources, _ = job.list_sources([sample], "polarity", schema.TRAIN, "--input", LABELS)
    skips = Skips()
    rows = [r for s in sources for r in job.read_source(
        s, labels=LABELS, encoding="latin-1", label_column="label", text_column="text", skip=skips)]
    assert len(rows) == 10662 and sum(label for label, _ in rows) == 5331 and not skips


@pytest.mark.parametrize("flags, message", [
    (["--folds", "1"], "--folds must be >= 2, got 1"),
    (["--encoding", "utf-16"], "--encoding utf-16: only encodings that write line ends"),
    (["--encoding", "klingon"], "--encoding 'klingon' is not a codec"),
    (["--labels", "pos,POS"], "--labels 'pos,POS': a class name appears twice"),
    (["--labels", "pos"], "--labels 'pos': give at least two class names"),
    (["--curve-sizes", "100,x"], "--curve-sizes '100,x': expected sizes"),
    (["--word-dropout", "1"], "--word-dropout must be in \\[0, 1\\), got 1.0"),
])
def test_bad_flags_fail_before_work(tmp_path, flags, message):
    argv = ["--input", "x.tsv", "--format", "tsv", "--corpus", "c", "--embeddings", "e",
            "--output", str(tmp_path / "out"), *flags]
    with pytest.raises(ValueError, match=message):
        sentiment_job.parse_args(argv)
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- Beam job


def test_beam_job_ids_are_the_corpus_transform_ids(tmp_path, topic_embeddings):
    corpus_dir, _ = topic_embeddings
    write_tsv(tmp_path / "in" / "a.tsv", [("pos", "The CAT, sat-on ZEBRA!"), ("neg", "hammer... axe"),
                                          ("neg", " ?! "), ("meh", "cow")])
    fixtures.write(str(tmp_path / "in" / "b.csv"), "text,label\nred and blue,1\n")
    fixtures.write(str(tmp_path / "docs" / "pos" / "x.txt"), "Horse\nand\ngoat\n")
    fixtures.write(str(tmp_path / "docs" / "neg" / "y.txt"), b"drill \xff\n")
    sources = (job.list_sources([str(tmp_path / "in" / "a.tsv")], "tsv", schema.TRAIN, "--input", LABELS)[0]
               + job.list_sources([str(tmp_path / "in" / "b.csv")], "csv", schema.TRAIN, "--input", LABELS)[0]
               + job.list_sources([str(tmp_path / "docs")], "folders", schema.EVAL, "--eval-input", LABELS)[0])
    args, _ = sentiment_job.parse_args(["--input", "unused", "--format", "tsv", "--corpus", corpus_dir,
                              "--embeddings", "unused", "--output", str(tmp_path / "unused"),
                              "--eval-input", "unused", "--num-shards", "1"])
    examples_dir = str(tmp_path / "examples")
    with TestPipeline(runner="FnApiRunner") as p:
        tokenized = (p
                     | "Read" >> job.ReadLabelledText(sources=sources, labels=LABELS)
                     | "Tokenize" >> job.TokenizeText(corpus_dir=corpus_dir))
        assert_that(tokenized | beam.MapTuple(lambda split, label, ids, key: (split, label, ids.tolist(), key)),
                    equal_to([
                        ("train", 1, expected_ids(corpus_dir, ["the", "cat", "sat", "on", "zebra"]),
                         job.text_hash("The CAT, sat-on ZEBRA!")),
                        ("train", 0, expected_ids(corpus_dir, ["hammer", "axe"]), job.text_hash("hammer... axe")),
                        ("train", 1, expected_ids(corpus_dir, ["red", "and", "blue"]),
                         job.text_hash("red and blue")),
                        ("eval", 1, expected_ids(corpus_dir, ["horse", "and", "goat"]),
                         job.text_hash("Horse\nand\ngoat")),
                    ]), label="CheckIds")
        sentiment_job.build(p, args, sources, examples_dir)
    counts = sentiment_job.counters(p.result)
    # Every counter counts twice: the check and the job read the same sources.
    assert counts["skipped_no_tokens"] == 2 and counts["skipped_unknown_label"] == 2
    assert counts["skipped_undecodable"] == 2
    assert counts["examples_train"] == 6 and counts["examples_eval"] == 2
    assert counts["oov_tokens"] == 2 * 3 and counts["tokens"] == 2 * 13  # sat, on, zebra

    train = trainer.load_examples(sentiment_job.example_files(examples_dir, schema.TRAIN))
    got = sorted(zip(train.labels.tolist(), [i.tolist() for i in train.ids], train.keys.tolist()))
    assert got == sorted([(1, expected_ids(corpus_dir, ["the", "cat", "sat", "on", "zebra"]),
                           job.text_hash("The CAT, sat-on ZEBRA!")),
                          (0, expected_ids(corpus_dir, ["hammer", "axe"]), job.text_hash("hammer... axe")),
                          (1, expected_ids(corpus_dir, ["red", "and", "blue"]), job.text_hash("red and blue"))])
    assert len(trainer.load_examples(sentiment_job.example_files(examples_dir, schema.EVAL))) == 1


# ------------------------------------------------------------------------ model pieces


def test_token_mean_ignores_padding_and_oov():
    vectors = np.arange(12, dtype=np.float32).reshape(4, 3)
    config = trainer.SentimentConfig(fine_tune=False)
    model = trainer.build_model(config, vocab_size=4, dim=3, num_classes=2, vectors=vectors)
    mean = keras.Model(model.input, model.get_layer("token_mean").output)
    ids = np.array([[1, 3, 4, -1], [4, -1, -1, -1], [2, 2, 0, -1]], np.int64)  # 4 is OOV
    np.testing.assert_allclose(mean(ids, training=False),
                               [(vectors[1] + vectors[3]) / 2, np.zeros(3), (2 * vectors[2] + vectors[0]) / 3])
    # The table is frozen: batch norm's scale and offset, the hidden and output layers.
    assert trainer.trainable_params(model) == 2 * 3 + 3 * 64 + 64 + 64 + 1
    with pytest.raises(ValueError, match="--hidden must be >= 1"):
        checked_config(hidden=0)


def test_lazy_adam_moves_only_the_rows_a_batch_holds():
    table = np.random.default_rng(0).normal(size=(6, 2)).astype(np.float32)

    def step_twice(optimizer):
        variable = tf.Variable(table)
        for rows in ([0, 1], [1, 2]):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.gather(variable, rows) ** 2)
            optimizer.apply_gradients([(tape.gradient(loss, variable), variable)])
            yield variable.numpy().copy()

    lazy_first, lazy_second = step_twice(trainer.LazyAdam(0.1))
    dense_first, dense_second = step_twice(keras.optimizers.Adam(0.1))
    np.testing.assert_allclose(lazy_first, dense_first, rtol=1e-6)  # no history yet: the same
    assert (lazy_first[0] != table[0]).all() and (lazy_first[3:] == table[3:]).all()
    # Row 0 is not in the second batch: Adam keeps moving it on its momentum, LazyAdam not.
    np.testing.assert_array_equal(lazy_second[0], lazy_first[0])
    assert (dense_second[0] != dense_first[0]).all()
    np.testing.assert_array_equal(lazy_second[3:], table[3:])


def test_pretrained_rows_are_fine_tuned_at_a_fraction_of_the_rate():
    table = np.ones((4, 2), np.float32)
    moves = {}
    for scale in (1.0, 0.1):
        variable = tf.Variable(table)
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.gather(variable, [1]) ** 2)
        trainer.LazyAdam(0.01, sparse_scale=scale).apply_gradients([(tape.gradient(loss, variable), variable)])
        moves[scale] = table[1] - variable.numpy()[1]
    np.testing.assert_allclose(moves[0.1], 0.1 * moves[1.0], rtol=1e-5)
    assert (moves[1.0] > 0).all()
    config = trainer.SentimentConfig(fine_tune_rate=0.25)
    vectors = np.ones((5, 3), np.float32)
    pretrained = trainer.build_model(config, vocab_size=5, dim=3, num_classes=2, vectors=vectors)
    scratch = trainer.build_model(config, vocab_size=5, dim=3, num_classes=2)
    assert pretrained.optimizer.sparse_scale == 0.25 and scratch.optimizer.sparse_scale == 1.0
    with pytest.raises(ValueError, match="--fine-tune-rate must be > 0"):
        checked_config(fine_tune_rate=0)


def test_folds_validation_and_curve_subsets_are_deterministic_hashes():
    keys = np.array([job.text_hash(f"text {i}") for i in range(300)] + [job.text_hash("text 0")])
    examples = trainer.Examples([np.array([i % 7]) for i in range(301)], np.arange(301) % 2, keys)
    pool, splits, _ = trainer.make_splits(examples, None, 3, None)
    tested = np.concatenate([test for _, _, test in splits])
    assert sorted(tested.tolist()) == list(range(301))  # every example tested once
    assert 300 in splits[keys[0] % 3][2] and 0 in splits[keys[0] % 3][2]  # same text, same fold
    assert all(70 < len(test) < 130 for _, _, test in splits)
    fit_at, validation_at = trainer.split_validation(examples, 0.1)
    assert 15 < len(validation_at) < 45 and not set(fit_at) & set(validation_at)
    order = trainer.curve_order(keys)
    assert order.tolist() == trainer.curve_order(keys.copy()).tolist()
    assert sorted(order.tolist()) == list(range(301))
    with pytest.raises(ValueError, match="--folds 400: .* would be empty"):
        trainer.make_splits(examples, None, 400, None)


def test_a_held_out_set_without_a_class_is_refused():
    keys = np.array([job.text_hash(f"text {i}") for i in range(200)])
    pool, units, description = trainer.make_splits(
        trainer.Examples([np.array([1])] * 200, np.zeros(200, np.int64), keys), None, None, 0.1)
    held = units[0][2]
    labels = np.zeros(200, np.int64)
    labels[units[0][1][:50]] = 1  # class 1 only in the training part
    pool = trainer.Examples(pool.ids, labels, keys)
    with pytest.raises(ValueError, match=r"the held-out 0.1 of --input .* holds no example of class "
                                         rf"pos \(per class: neg {len(held)}, pos 0; classes from "
                                         r"--labels neg,pos\)"):
        trainer.check_units(pool, units, LABELS, description)
    labels[held[:1]] = 1
    trainer.check_units(trainer.Examples(pool.ids, labels, keys), units, LABELS, description)
    # A fold's test set may lack a class (warned of); its training set may not.
    fold_units = [("fold 0", np.arange(100, 200), np.arange(100)),
                  ("fold 1", np.arange(100), np.arange(100, 200))]
    one_sided = np.r_[np.zeros(100, np.int64), np.ones(100, np.int64)]
    with pytest.raises(ValueError, match="the training set of fold 0 holds no example of class neg"):
        trainer.check_units(trainer.Examples(pool.ids, one_sided, keys), fold_units, LABELS, "2 folds")


# ---------------------------------------------------------------------- whole runs


def _run_cli(argv):
    return cli.run_job("sentiment", sentiment_job.run, argv)


def test_inputs_are_checked_before_any_work(tmp_path, topic_embeddings, capsys):
    corpus_dir, embeddings_dir = topic_embeddings
    train = write_tsv(tmp_path / "train.tsv", [("pos", "cat")])
    base = ["--input", train, "--format", "tsv", "--output", str(tmp_path / "out")]
    other = str(tmp_path / "other")
    shutil.copytree(embeddings_dir, other)
    vectors = WordVectors.load(other)
    WordVectors(vectors.index_to_key[::-1], vectors.vectors, vectors.counts).save(other)
    assert _run_cli(base + ["--corpus", corpus_dir, "--embeddings", other]) == 2
    assert "were not trained on --corpus" in capsys.readouterr().err
    assert _run_cli(base + ["--corpus", str(tmp_path / "nope"), "--embeddings", embeddings_dir]) == 2
    assert f"--corpus {tmp_path / 'nope'} does not exist: run `embedflow corpus" in capsys.readouterr().err
    assert _run_cli(base + ["--corpus", corpus_dir, "--embeddings", embeddings_dir,
                            "--eval-input", write_tsv(tmp_path / "eval.tsv", [("meh", "cat")])]) == 2
    assert "the eval split is empty" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["eval.tsv", "other", "train.tsv"]


def test_a_one_class_dataset_is_refused_with_the_counts(tmp_path, topic_embeddings, caplog):
    """Issue #10: positive rows without their label cell left a one-class set scored 1.0."""
    caplog.set_level(logging.INFO)
    corpus_dir, embeddings_dir = topic_embeddings
    rows = topic_texts({"neg": NEGATIVE, "": POSITIVE}, 28, seed=4)
    train = write_tsv(tmp_path / "in" / "train.tsv", rows)
    argv = ["--input", train, "--format", "tsv", "--corpus", corpus_dir, "--embeddings",
            embeddings_dir, "--output", str(tmp_path / "out"), "--folds", "2"]
    with pytest.raises(ValueError, match=r"28 of the 56 texts read were skipped \(50.0%; unknown_label "
                                         r"28\), more than --max-skipped-fraction 0.1: .* pass "
                                         r"--max-skipped-fraction 0.5 to train on the rest"):
        sentiment_job.run(argv)
    assert "sentiment: skipped 28 texts: unknown_label 28" in caplog.text
    with pytest.raises(ValueError, match=r"^the train split holds no example of class pos \(per class: "
                                         r"neg 28, pos 0; classes from --labels neg,pos\)"):
        sentiment_job.run(argv + ["--max-skipped-fraction", "0.5"])
    assert "sentiment: train split: 28 examples (per class: neg 28, pos 0)" in caplog.text
    assert sorted(os.listdir(tmp_path)) == ["in"]


def test_cross_validation_tests_every_example_once(tmp_path, topic_embeddings):
    corpus_dir, embeddings_dir = topic_embeddings
    vocab = {t: i for i, (t, _) in enumerate(fixtures.read_vocab(corpus_dir))}
    rows = topic_texts({1: POSITIVE, 0: NEGATIVE}, 45, seed=3)
    examples = trainer.Examples(
        [np.array(expected_ids(corpus_dir, text.rstrip(".!,").lower().split())) for _, text in rows],
        np.array([label for label, _ in rows]), np.array([job.text_hash(t) for _, t in rows]))
    config = trainer.SentimentConfig(epochs=10, batch_size=16, min_epoch_batches=4, seed=2)
    data = trainer.Data(examples=examples, eval_examples=None,
                        vectors=trainer.load_vectors(embeddings_dir, len(vocab)), labels=LABELS)
    evaluation = trainer.Evaluation(folds=2, eval_fraction=None, compare_scratch=False,
                                    curve_sizes=(12,))
    report = trainer.train(config, data, evaluation, corpus_dir=corpus_dir, output_dir=str(tmp_path))
    metrics = json.load(open(tmp_path / schema.METRICS_FILE, encoding="utf-8"))
    assert metrics["examples"] == 90 and np.sum(metrics["pretrained"]["confusion_matrix"]) == 90
    assert len(metrics["pretrained"]["split_accuracy"]["values"]) == 2
    assert metrics["accuracy"] == pytest.approx(np.mean(metrics["pretrained"]["split_accuracy"]["values"]))
    assert metrics["accuracy"] >= 0.9 and report["accuracy"] == metrics["accuracy"]
    assert metrics["learning_curve"]["size_names"] == ["12", "all"]
    assert metrics["learning_curve"]["sizes"][1] == pytest.approx(45, abs=10)
    assert metrics["scratch"] is None and metrics["exported_model"]["trained_on"] == "every example"
    for plot in (schema.SIZE_CURVE_PLOT, schema.TRAINING_CURVES_PLOT, schema.CONFUSION_MATRIX_PLOT):
        assert (tmp_path / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_end_to_end_pretrained_beats_scratch_then_serve_from_saved_model_alone(
        tmp_path, topic_embeddings, capsys):
    corpus_dir, embeddings_dir = (str(tmp_path / "corpus"), str(tmp_path / "embeddings"))
    shutil.copytree(topic_embeddings[0], corpus_dir)
    shutil.copytree(topic_embeddings[1], embeddings_dir)
    labelled = lambda rows: [(LABELS[label], text) for label, text in rows]  # noqa: E731
    train = write_tsv(tmp_path / "in" / "train.tsv", labelled(
        topic_texts({1: POSITIVE[:4], 0: NEGATIVE[:4]}, 100, seed=1)))
    eval_rows = labelled(topic_texts({1: POSITIVE[4:], 0: NEGATIVE[4:]}, 40, seed=2))
    evaluate = write_tsv(tmp_path / "in" / "eval.tsv", eval_rows)
    out = str(tmp_path / "out")
    sentiment_job.run(["--input", train, "--eval-input", evaluate, "--format", "tsv", "--corpus", corpus_dir,
             "--embeddings", embeddings_dir, "--output", out, "--compare-scratch", "--curve-sizes",
             "none", "--hidden", "16", "--epochs", "12", "--batch-size", "16", "--min-epoch-batches", "1",
             "--adapt-epochs", "3", "--seed", "1"])
    printed = capsys.readouterr().out
    assert "sentiment: eval: scratch embeddings, 200 training examples" in printed

    info = json.load(open(os.path.join(out, artifact_names.INFO_FILE), encoding="utf-8"))
    assert info["counts"]["examples_train"] == 200 and info["counts"]["examples_eval"] == 80
    metrics = json.load(open(os.path.join(out, schema.METRICS_FILE), encoding="utf-8"))
    # Eval texts use only words no training text holds: random embeddings know nothing of
    # them, the pretrained ones put them beside the training words of their topic.
    assert metrics["accuracy"] >= 0.9
    assert metrics["scratch"]["accuracy"] <= 0.75
    assert metrics["pretrained_minus_scratch"] >= 0.2
    assert metrics["learning_curve"]["size_names"] == ["all"]
    assert info["model"]["learning_curve"]["scratch"]["all"] == metrics["scratch"]["accuracy"]
    # The vectors were adapted once, on the 200 training texts (the eval texts' words stay put).
    assert info["model"]["adaptation"]["units"] == 1 and info["model"]["adaptation"]["epochs"] == 3

    for path in (corpus_dir, embeddings_dir, os.path.join(out, schema.EXAMPLES_DIR)):
        shutil.rmtree(path)
    model = tf.saved_model.load(os.path.join(out, schema.MODEL_DIR))
    serve = model.signatures["serving_default"]
    result = serve(tf.constant([text for _, text in eval_rows]))
    served = np.mean(result[schema.SERVING_CLASSES].numpy().astype(str) == [l for l, _ in eval_rows])
    assert served == pytest.approx(metrics["accuracy"])  # the same model, tokenized the same
    result = serve(tf.constant(["THE COW and the Sheep!", "chisel, PLIERS", "zebra unicorn", ""]))
    probabilities = result[schema.SERVING_PROBABILITIES].numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)
    assert result[schema.SERVING_CLASSES].numpy().astype(str)[:2].tolist() == ["pos", "neg"]
    assert result[schema.SERVING_CLASS_IDS].numpy()[:2].tolist() == [1, 0]
    # Unknown words and no words both average to zeros: the same answer.
    np.testing.assert_allclose(probabilities[2], probabilities[3], rtol=1e-6)


def test_min_epochs_keeps_early_stopping_from_giving_up_at_once(topic_embeddings):
    corpus_dir, embeddings_dir = topic_embeddings
    vocab_size = len(fixtures.read_vocab(corpus_dir))
    rows = topic_texts({1: POSITIVE, 0: NEGATIVE}, 30, seed=5)
    examples = trainer.Examples(
        [np.array(expected_ids(corpus_dir, text.rstrip(".!,").lower().split())) for _, text in rows],
        np.array([label for label, _ in rows]), np.array([job.text_hash(t) for _, t in rows]))
    vectors = trainer.load_vectors(embeddings_dir, vocab_size)
    runs = {}
    for min_epochs in (0, 6):
        # patience 0: without min_epochs, the first epoch that fails to improve ends it.
        config = trainer.SentimentConfig(epochs=8, batch_size=16, min_epoch_batches=2, patience=0,
                                         learning_rate=0.5, min_epochs=min_epochs, seed=1)
        trained = trainer.fit(config, examples, vectors=vectors, pretrained=True, num_classes=2)
        runs[min_epochs] = len(trained.history["loss"])
    assert runs[6] >= 7  # watched only from the seventh epoch on
    assert runs[0] < runs[6]


def test_vectors_are_adapted_on_each_training_fold_and_never_on_its_test_texts(
        tmp_path, topic_embeddings, monkeypatch):
    corpus_dir, embeddings_dir = topic_embeddings
    vocab = fixtures.read_vocab(corpus_dir)
    rows = topic_texts({1: POSITIVE, 0: NEGATIVE}, 30, seed=4)
    examples = trainer.Examples(
        [np.array(expected_ids(corpus_dir, text.rstrip(".!,").lower().split())) for _, text in rows],
        np.array([label for label, _ in rows]), np.array([job.text_hash(t) for _, t in rows]))
    vectors = trainer.load_vectors(embeddings_dir, len(vocab))
    seen, real = [], trainer.adapt.adapt_vectors

    def spy(start, counts, texts, **kwargs):
        seen.append((sorted(tuple(t) for t in texts), kwargs["epochs"]))
        adapted = real(start, counts, texts, **kwargs)
        assert not np.allclose(adapted, start)  # the models get vectors that moved
        return adapted

    monkeypatch.setattr(trainer.adapt, "adapt_vectors", spy)
    config = trainer.SentimentConfig(epochs=3, batch_size=16, min_epoch_batches=2, adapt_epochs=4, seed=2)
    data = trainer.Data(examples=examples, eval_examples=None, vectors=vectors, labels=LABELS,
                        counts=np.array([count for _, count in vocab]))
    evaluation = trainer.Evaluation(folds=2, eval_fraction=None, compare_scratch=True, curve_sizes=(10,))
    report = trainer.train(config, data, evaluation, corpus_dir=corpus_dir, output_dir=str(tmp_path))
    texts = [tuple(t) for t in examples.ids]
    folds = [sorted(t for t, key in zip(texts, examples.keys) if key % 2 != k) for k in (0, 1)]
    # Each fold adapts on its training texts alone (the test fold's never), the exported
    # model on every text; the learning curve's 10-text sets reuse their fold's vectors.
    assert sorted(s for s, _ in seen[:2]) == sorted(folds) and seen[2][0] == sorted(texts)
    assert [epochs for _, epochs in seen] == [4, 4, 4]
    assert report["adaptation"]["units"] == 3 and report["adaptation"]["epochs"] == 4

    with pytest.raises(ValueError, match="--adapt-epochs needs the corpus counts"):
        trainer.train(config, data._replace(counts=None), evaluation, corpus_dir=corpus_dir,
                      output_dir=str(tmp_path / "again"))
