"""Import-vectors job: the four file formats (files written by gensim and by hand), the
tokenizer folding, every bad-file case (file and line named, nothing published), the
SavedModel served after the source is gone, `embedflow sentiment` trained on an import
and served from its SavedModel alone, and `embedflow train --init-from` an import."""

import gzip
import json
import os
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf
from gensim.models import KeyedVectors

from core.main import run_job
from jobs import corpus as corpus_job
from jobs import import_vectors as job
from jobs import sentiment as sentiment_job
from jobs import train as train_job
from schemas import artifacts as artifact_names
from schemas import corpus as corpus_schema
from schemas import embeddings as embeddings_schema
from schemas import sentiment as sentiment_schema
from tests import fixtures
from trainer.formats import FORMATS, VectorReader, write_vectors
from trainer.vectors import WordVectors

DIM = 8
ANIMALS, TOOLS = fixtures.TOPICS["animals"], fixtures.TOPICS["tools"]


def read_text(*parts):
    with open(os.path.join(*parts), encoding="utf-8") as f:
        return f.read()


def read_rows(path, fmt):
    with VectorReader(path, fmt) as reader:
        rows = list(reader)
        return reader, [r.word for r in rows], np.stack([r.vector for r in rows])


def random_vectors(n, dim=4, seed=0):
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def topic_vectors():
    """(words, vectors): one direction per topic plus noise, case variants and junk first.

    "Cat" comes before "cat" and holds an animal vector, "cat" a tool vector: the row of
    "cat" must be Cat's (first wins), or the sentiment model cannot learn the topics.
    """
    rng = np.random.default_rng(7)
    words, rows = ["</s>", "The", "New_York"], [rng.normal(size=DIM), np.eye(DIM)[3], rng.normal(size=DIM)]
    words += ["Cat", "and", "a"]
    rows += [np.eye(DIM)[0], np.eye(DIM)[3], np.eye(DIM)[3]]
    for axis, topic in ((0, ANIMALS), (1, TOOLS), (2, fixtures.TOPICS["colors"])):
        for word in topic:
            words.append(word)
            rows.append(np.eye(DIM)[axis] if word != "cat" else np.eye(DIM)[1])
    words += ["hello!", "the"]
    rows += [rng.normal(size=DIM), rng.normal(size=DIM)]
    vectors = np.asarray(rows, np.float32) + 0.05 * rng.normal(size=(len(rows), DIM)).astype(np.float32)
    return words, vectors


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """(source file, import output dir, source words, source vectors): gzipped word2vec binary."""
    root = tmp_path_factory.mktemp("import")
    words, vectors = topic_vectors()
    kv = KeyedVectors(vector_size=DIM)
    kv.add_vectors(words, vectors)
    plain = str(root / "plain.bin")
    kv.save_word2vec_format(plain, binary=True)
    source = str(root / "source" / "vectors.bin")  # gzip content, no .gz name
    os.makedirs(os.path.dirname(source))
    with open(plain, "rb") as f, gzip.open(source, "wb") as g:
        g.write(f.read())
    coverage = fixtures.write(str(root / "coverage.txt"), "The cat and the zebra!\nA drill, a UNICORN.\n")
    out = job.run(["--vectors", source, "--format", "word2vec-binary", "--output", str(root / "out"),
                   "--coverage-text", coverage])
    return source, out, words, vectors


# ------------------------------------------------------------------------ formats


@pytest.mark.parametrize("binary", [False, True])
def test_reads_gensim_word2vec_files_exactly(tmp_path, binary):
    words = ["the", "Café", "naïve", "New_York", "x\u00a0y", "日本"]  # NBSP is not a separator
    vectors = random_vectors(len(words), dim=5)
    kv = KeyedVectors(vector_size=5)
    kv.add_vectors(words, vectors)
    path = str(tmp_path / "v.bin")
    kv.save_word2vec_format(path, binary=binary)
    reader, got_words, got = read_rows(path, "word2vec-binary" if binary else "word2vec")
    assert (reader.dim, reader.declared_count) == (5, len(words))
    assert got_words == words
    np.testing.assert_array_equal(got, vectors)  # text: gensim writes float32's shortest repr


def test_reads_glove_without_header_and_fasttext_vec_with_trailing_spaces(tmp_path):
    glove = fixtures.write(str(tmp_path / "glove.txt"), "the 0.5 -1 2e-3\r\nof 1 2 3\n\n")
    reader, words, vectors = read_rows(glove, "glove")
    assert (reader.dim, reader.declared_count, words) == (3, None, ["the", "of"])
    np.testing.assert_array_equal(vectors, np.array([[0.5, -1, 2e-3], [1, 2, 3]], np.float32))
    vec = fixtures.write(str(tmp_path / "wiki.vec"), "2 2 \n</s> 0.1 0.2 \n, 0.3 0.4 \n", compress=True)
    reader, words, vectors = read_rows(vec, "fasttext-vec")  # gzip by content, name says .vec
    assert (reader.dim, reader.declared_count, words) == (2, 2, ["</s>", ","])
    np.testing.assert_array_equal(vectors, np.array([[0.1, 0.2], [0.3, 0.4]], np.float32))


@pytest.mark.parametrize("fmt", FORMATS)
def test_writer_round_trips_every_format_and_gensim_reads_it(tmp_path, fmt):
    words, vectors = ["b", "a", "über"], random_vectors(3)
    path = str(tmp_path / "v")
    write_vectors(path, words, vectors, fmt)
    _, got_words, got = read_rows(path, fmt)
    assert got_words == words
    np.testing.assert_allclose(got, vectors, rtol=1e-7)
    kv = KeyedVectors.load_word2vec_format(path, binary=fmt == "word2vec-binary",
                                           no_header=fmt == "glove")
    assert kv.index_to_key == words
    np.testing.assert_allclose(kv.vectors, vectors, rtol=1e-7)


# ------------------------------------------------------------------------ folding


def test_words_fold_onto_tokens_first_wins_and_junk_is_dropped(tmp_path):
    words = ["The", "New_York", "the", "cat", "Cat.", "'tis", "</s>", "---", "don't", "3.14", "CAT"]
    vectors = random_vectors(len(words))
    path = str(tmp_path / "v.bin")
    write_vectors(path, words, vectors, "word2vec-binary")
    with open(path, "ab") as f:  # a word that is not UTF-8, after the rest
        f.write(b"caf\xe9 " + np.ones(4, "<f4").tobytes())
    with open(path, "r+b") as f:
        f.write(f"{len(words) + 1} 4\n".encode())  # the header grows by one, same width
    vocabulary, source = job.read_vocabulary(path, "word2vec-binary")
    wv = vocabulary.word_vectors()
    assert wv.index_to_key == ["the", "cat", "tis", "don't", "3.14"]
    np.testing.assert_array_equal(wv["the"], vectors[0])  # "The" came first: its vector
    np.testing.assert_array_equal(wv["cat"], vectors[3])
    np.testing.assert_array_equal(wv["tis"], vectors[5])
    assert wv.counts.tolist() == [5, 4, 3, 2, 1]
    summary = vocabulary.summary()
    assert {k: summary[k] for k in ("read", "kept", "kept_as_is", "kept_folded", "folded", "merged",
                                    "dropped")} == {"read": 12, "kept": 5, "kept_as_is": 3,
                                                    "kept_folded": 2, "folded": 4, "merged": 3,
                                                    "dropped": 4}
    assert summary["dropped_by_reason"] == {"no_token": 1, "several_tokens": 1,
                                            "end_of_sentence_marker": 1, "invalid_utf8": 1}
    assert {"word": "the", "token": "the", "line": 4, "row_from_line": 2} in summary["examples"]["merged"]
    assert source == {"format": "word2vec-binary", "dim": 4, "header_count": 12, "rows_read": 12,
                      "read_to_end": True}


def test_max_words_stops_reading_at_the_last_kept_word(tmp_path):
    path = fixtures.write(str(tmp_path / "v.txt"),
                          "5 2\nA 1 1\na 2 2\nb_c 3 3\nd 4 4\nbroken row\n")
    vocabulary, source = job.read_vocabulary(path, "word2vec", max_words=2, chunk=1000)
    assert vocabulary.tokens == ["a", "d"] and source["rows_read"] == 4 and not source["read_to_end"]
    with pytest.raises(ValueError, match=r"v\.txt:6: expected a word and 2 numbers"):
        job.read_vocabulary(path, "word2vec", max_words=3)


# ------------------------------------------------------------------------ bad files


def _binary(header, *records):
    return header.encode() + b"".join(w.encode() + b" " + np.asarray(v, "<f4").tobytes() + b"\n"
                                      for w, v in records)


BAD_FILES = [
    ("word2vec", "", r"f: the file is empty"),
    ("glove", "\n\n", r"f: the file is empty"),
    ("word2vec", "0 3\n", r"f:1: the header says 0 vectors"),
    ("word2vec", "the 1 2\nof 3 4\n", r"f:1: expected a 'COUNT DIM' header, got 'the 1 2' \(GloVe files"),
    ("word2vec", "3 2\na 1 2\nb 3 4\n", r"f:4: the header says 3 vectors, but the file ends after 2"),
    ("fasttext-vec", "1 2 \na 1 2 \nb 3 4 \n", r"f:3: the header says 1 vectors, but more rows follow"),
    ("word2vec", "2 3\na 1 2 3\nb 1 2\n", r"f:3: expected a word and 3 numbers, got 2 fields after the word 'b'"),
    ("glove", "a 1 2\nb 1 2 3\n", r"f:2: expected a word and 2 numbers, got 3"),
    ("glove", "2 2\na 1 2\n", r"f:2: expected a word and 1 numbers, got 2 .*use --format word2vec"),
    ("glove", "a 1 2\nb 1 x\n", r"f:2: value 2 is not a number: 'x'"),
    ("glove", "a 1 2\nb 1  2\n", r"f:2: expected a word and 2 numbers, got 3"),
    ("word2vec", "1 3\nb 1  2\n", r"f:2: value 2 is empty \(two spaces in a row\)"),
    ("word2vec", "2 2\na 1 2\nb 1 nan\n", r"f:3: value 2 of 'b' is nan"),
    ("word2vec", "2 2\na inf 2\nb 1 2\n", r"f:2: value 1 of 'a' is inf"),
    ("glove", "a 1 1e39\n", r"f:1: value 2 of 'a' is inf \(NaN, infinite, or too large for float32\)"),
    ("glove", "a 1 2\nb 3 4\na 5 6\n", r"f:3: the word 'a' appears again \(first on line 1\)"),
    ("word2vec", "3 1\nThe 1\nthe 2\nThe 3\n", r"f:4: the word 'The' appears again \(first on line 2\)"),
    ("glove", "a 1 2\n\nb 3 4\n", r"f:2: an empty line between rows"),
    ("word2vec-binary", b"", r"f: the file is empty"),
    ("word2vec-binary", _binary("3 2\n", ("a", [1, 2]), ("b", [3, 4])),
     r"f:4 \(byte 26\): the header says 3 vectors, but the file ends after 2"),
    ("word2vec-binary", _binary("1 2\n", ("a", [1, 2]), ("b", [3, 4])),
     r"f:3 \(byte 15\): the header says 1 vectors, but more data follows"),
    ("word2vec-binary", _binary("2 2\n", ("a", [1, 2]), ("b", [3, np.nan])),
     r"f:3 \(byte 15\): value 2 of 'b' is nan"),
    ("word2vec-binary", _binary("2 2\n", ("a", [1, 2]), ("a", [3, 4])),
     r"f:3 \(byte 15\): the word 'a' appears again \(first on line 2\)"),
    ("word2vec-binary", _binary("1 3\n", ("a", [1, 2])), r"f:2 \(byte 4\): the file ends inside the vector of 'a'"),
]


@pytest.mark.parametrize("fmt, content, message", BAD_FILES)
def test_bad_files_fail_naming_the_file_and_line(tmp_path, fmt, content, message):
    path = fixtures.write(str(tmp_path / "f"), content)
    with pytest.raises(ValueError, match=message.replace("f", re.escape(path), 1)):
        job.read_vocabulary(path, fmt)


def test_bad_flags_fail_before_work(tmp_path):
    base = ["--vectors", "v.txt", "--output", str(tmp_path / "out")]
    with pytest.raises(ValueError, match="--max-words must be >= 1, got 0"):
        job.parse_args(base + ["--format", "glove", "--max-words", "0"])
    with pytest.raises(SystemExit):
        job.parse_args(base + ["--format", "word2vec-text"])
    params, beam_args = job.parse_args(base + ["--format", "glove", "--runner", "FnApiRunner"])
    assert (params.format, params.max_words, beam_args) == ("glove", None, ["--runner", "FnApiRunner"])
    assert os.listdir(tmp_path) == []


def test_bad_file_through_the_command_publishes_nothing(tmp_path, capsys):
    path = fixtures.write(str(tmp_path / "in" / "v.txt"), "2 2\na 1 2\nb 1 x\n")
    out = str(tmp_path / "out")
    assert run_job("import-vectors", job.run, ["--vectors", path, "--format", "word2vec",
                                               "--output", out]) == 2
    assert f"embedflow import-vectors: error: {path}:3: value 2 is not a number: 'x'" \
        in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["in"]
    assert run_job("import-vectors", job.run, ["--vectors", str(tmp_path / "none.txt"), "--format",
                                               "glove", "--output", out]) == 2
    assert "--vectors" in capsys.readouterr().err and sorted(os.listdir(tmp_path)) == ["in"]
    none_kept = fixtures.write(str(tmp_path / "in" / "junk.txt"), "New_York 1\n--- 2\n")
    assert run_job("import-vectors", job.run, ["--vectors", none_kept, "--format", "glove",
                                               "--output", out]) == 2
    assert "none of its 2 words is a token" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["in"]


# ------------------------------------------------------------------------ the output


def test_output_is_an_embeddings_output_and_a_tokenizer(imported):
    _, out, words, vectors = imported
    info = json.loads(read_text(out, artifact_names.INFO_FILE))
    assert os.path.exists(os.path.join(out, artifact_names.COMPLETED_FILE))
    wv = WordVectors.load(out)
    kept = ["the", "cat", "and", "a", *[w for w in ANIMALS if w != "cat"], *TOOLS,
            *fixtures.TOPICS["colors"], "hello"]
    assert wv.index_to_key == kept and info["vocab_size"] == len(kept) == info["oov_id"]
    np.testing.assert_array_equal(wv["the"], vectors[words.index("The")])
    np.testing.assert_array_equal(wv["cat"], vectors[words.index("Cat")])
    np.testing.assert_array_equal(wv["hello"], vectors[words.index("hello!")])
    vocab_tsv = read_text(out, corpus_schema.VOCAB_FILE)
    assert vocab_tsv == read_text(out, embeddings_schema.VOCAB_TXT)
    assert vocab_tsv.splitlines()[:2] == [f"the\t{len(kept)}", f"cat\t{len(kept) - 1}"]
    gensim = KeyedVectors.load_word2vec_format(os.path.join(out, embeddings_schema.WORD2VEC_TXT))
    assert gensim.index_to_key == kept
    assert {k: info["words"][k] for k in ("read", "kept", "kept_folded", "merged", "dropped")} == {
        "read": len(words), "kept": len(kept), "kept_folded": 3, "merged": 2, "dropped": 2}
    # "The cat and the zebra! A drill, a UNICORN.": 9 tokens, zebra and unicorn unknown.
    assert info["coverage"]["tokens"] == 9 and info["coverage"]["covered"] == 7
    assert info["source"]["header_count"] == len(words) and info["counts"]["synthetic"]
    assert not [p for p in os.listdir(os.path.dirname(out)) if ".partial-" in p]
    assert "tmp" not in os.listdir(out)


def test_saved_model_serves_after_the_source_file_is_deleted(imported, tmp_path):
    source, out, words, vectors = imported
    moved = str(tmp_path / "moved")
    shutil.copytree(out, moved)
    os.remove(source)
    served = tf.saved_model.load(os.path.join(moved, embeddings_schema.SAVED_MODEL_DIR))
    result = served.signatures["serving_default"](tf.constant(["The CAT, zebra!", ""]))
    ids = result[embeddings_schema.SERVING_TOKEN_IDS].numpy()
    wv = WordVectors.load(moved)
    assert ids[0].tolist() == [wv.index("the"), wv.index("cat"), len(wv)]
    assert result[embeddings_schema.SERVING_MASK].numpy().tolist() == [[True, True, False],
                                                                       [False, False, False]]
    mean = result[embeddings_schema.SERVING_MEAN].numpy()
    np.testing.assert_allclose(mean[0], (vectors[words.index("The")] + vectors[words.index("Cat")]) / 2,
                               rtol=1e-6)
    np.testing.assert_array_equal(mean[1], np.zeros(DIM))


def _texts(words_by_label, count, seed):
    rng = np.random.default_rng(seed)
    rows = []
    for label, words in words_by_label.items():
        for _ in range(count):
            picked = [words[i] for i in rng.integers(len(words), size=rng.integers(3, 7))]
            picked.insert(int(rng.integers(len(picked) + 1)), ["The", "and", "a"][rng.integers(3)])
            rows.append((label, " ".join(picked) + rng.choice([".", "!", ""])))
    return rows


def test_sentiment_trains_on_an_import_and_serves_from_its_saved_model_alone(imported, tmp_path):
    _, out, _, _ = imported
    both = str(tmp_path / "imported")  # one directory, given as --corpus and as --embeddings
    shutil.copytree(out, both)

    def write(name, rows):
        return fixtures.write(str(tmp_path / "in" / name),
                              "label\ttext\n" + "".join(f"{label}\t{text}\n" for label, text in rows))

    # Training texts use the first four words of each topic, eval texts the last four:
    # only the imported vectors tell that "cow" is like "cat".
    train = write("train.tsv", _texts({"pos": ANIMALS[:4], "neg": TOOLS[:4]}, 60, seed=1))
    eval_rows = _texts({"pos": ANIMALS[4:], "neg": TOOLS[4:]}, 20, seed=2)
    evaluate = write("eval.tsv", eval_rows)
    result = str(tmp_path / "sentiment")
    sentiment_job.run(["--input", train, "--eval-input", evaluate, "--format", "tsv", "--corpus", both,
                       "--embeddings", both, "--output", result, "--curve-sizes", "none",
                       "--hidden", "16", "--epochs", "12", "--batch-size", "16",
                       "--min-epoch-batches", "1", "--seed", "1", "--num-shards", "1"])
    metrics = json.loads(read_text(result, sentiment_schema.METRICS_FILE))
    assert metrics["accuracy"] >= 0.9

    shutil.rmtree(both)
    shutil.rmtree(os.path.join(result, sentiment_schema.EXAMPLES_DIR))
    model = tf.saved_model.load(os.path.join(result, sentiment_schema.MODEL_DIR))
    serve = model.signatures["serving_default"]
    classes = serve(tf.constant([t for _, t in eval_rows]))[sentiment_schema.SERVING_CLASSES].numpy()
    assert np.mean(classes.astype(str) == [l for l, _ in eval_rows]) == pytest.approx(metrics["accuracy"])
    classes = serve(tf.constant(["THE COW and the Sheep!", "chisel, PLIERS"]))[
        sentiment_schema.SERVING_CLASSES].numpy().astype(str)
    assert classes.tolist() == ["pos", "neg"]


def test_train_init_from_an_import_starts_from_its_rows(imported, tmp_path):
    _, out, _, _ = imported
    text = fixtures.write(str(tmp_path / "in" / "topics.txt"), fixtures.topic_corpus(sentences=200))
    corpus = corpus_job.run(["--input", text, "--output", str(tmp_path / "corpus"), "--min-count", "1",
                             "--num-shards", "2"])
    # A learning rate too small to move anything: the trained rows are the starting rows.
    trained = train_job.run(["--corpus", corpus, "--output", str(tmp_path / "embeddings"),
                             "--init-from", out, "--epochs", "1", "--dim", str(DIM),
                             "--learning-rate", "1e-9", "--kernel", "tf", "--batch-size", "256"])
    start, result = WordVectors.load(out), WordVectors.load(trained)
    shared = [w for w in result.index_to_key if w in start]
    assert set(shared) == set(fixtures.TOPICS["animals"] + TOOLS + fixtures.TOPICS["colors"]
                              + ["the", "and", "a"])
    for word in shared:
        np.testing.assert_allclose(result[word], start[word], atol=1e-6)
    with pytest.raises(ValueError, match=f"--init-from {re.escape(out)} holds {DIM}-dimensional vectors"):
        train_job.run(["--corpus", corpus, "--output", str(tmp_path / "other"), "--init-from", out,
                       "--dim", str(DIM + 1), "--epochs", "1"])
