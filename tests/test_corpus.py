"""Corpus job: units, PTransforms under TestPipeline, and whole runs on tiny corpora."""

import json
import os

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
import tensorflow as tf
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from core import outputs
from jobs import corpus as corpus_job
from pipelines import corpus
from schemas import corpus as schema
from tests import fixtures

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "corpus_info.json")


def _run(tmp_path, *extra, inputs=None, name="out"):
    inputs = inputs or [fixtures.write(str(tmp_path / "in" / "tiny.txt"), fixtures.TINY_WIKI)]
    argv = []
    for path in inputs:
        argv += ["--input", path]
    out = str(tmp_path / name)
    corpus_job.run(argv + ["--output", out, "--num-shards", "2", *extra])
    return out


# ----------------------------------------------------------------------------- units


def test_window_pairs_counts_both_directions_and_dynamic_expectation():
    # n=3, window=2: distance 1 gives 2 ordered pairs each way (4), distance 2 gives 2.
    full, expected = corpus.window_pairs(3, 2)
    assert full == 6
    # distance 1 kept always (2/2), distance 2 kept half the time (1/2).
    assert expected == pytest.approx(4 + 2 * 0.5)
    assert corpus.window_pairs(1, 5) == (0, 0.0)


def test_split_runs_drops_oov_and_caps_length():
    runs = corpus.split_runs(np.array([0, 9, 1, 2, 9, 3, 4]), oov_id=9, max_span=2)
    assert fixtures.as_int_lists(runs) == [[0, 1], [2, 3], [4]]


def _lines(data, start=0, end=None, max_line_bytes=None):
    import io  # pylint: disable=import-outside-toplevel
    return list(corpus.iter_lines(io.BytesIO(data), start, end, max_line_bytes))


def test_iter_lines_handles_crlf_and_a_last_line_without_newline():
    assert _lines(b"a b\r\n\ncd\nlast") == [b"a b", b"", b"cd", b"last"]
    assert _lines(b"") == []


def test_iter_lines_ranges_cover_every_line_exactly_once():
    data = b"".join(b"line %d %s\n" % (i, b"x" * (i * 7 % 23)) for i in range(200)) + b"tail"
    whole = _lines(data)
    for step in (1, 7, 50, 333, len(data)):
        pieces = []
        for start in range(0, len(data), step):
            pieces += _lines(data, start, min(start + step, len(data)))
        assert pieces == whole, step


def test_iter_lines_reads_past_over_long_lines_without_keeping_them(monkeypatch):
    monkeypatch.setattr(corpus, "_CHUNK", 4)  # the long line spans many chunks
    assert _lines(b"ok\n" + b"y" * 40 + b"\nfine\n" + b"z" * 30, max_line_bytes=10) == [
        b"ok", None, b"fine", None]


def test_window_record_round_trip_through_schema(tmp_path):
    path = str(tmp_path / "w.tfrecord")
    with tf.io.TFRecordWriter(path) as w:
        w.write(corpus.encode_window_record([5, 0, 70000]))
    raw = next(iter(tf.data.TFRecordDataset([path])))
    parsed = tf.io.parse_single_example(raw, schema.WINDOWS_FEATURE_SPEC)
    assert tf.sparse.to_dense(parsed[schema.TOKEN_IDS_KEY]).numpy().tolist() == [5, 0, 70000]


@pytest.mark.parametrize("flag, value, message", [
    ("--min-count", "0", "--min-count must be >= 1, got 0"),
    ("--window", "0", "--window must be >= 1"),
    ("--sample", "1.5", "--sample must be in [0, 1)"),
    ("--max-vocab", "0", "--max-vocab must be >= 1"),
    ("--num-shards", "-1", "--num-shards must be >= 0"),
])
def test_bad_flags_fail_before_work(tmp_path, flag, value, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        corpus_job.parse_args(["--input", "x", "--output", str(tmp_path / "o"), flag, value])


def test_flags_keep_their_names_and_defaults_and_beam_flags_pass_through(tmp_path):
    args, beam_args = corpus_job.parse_args(["--input", "a", "--input", "b", "--output", str(tmp_path / "o"),
                                             "--runner", "DirectRunner", "--direct_num_workers=2"])
    assert args.input == ["a", "b"] and args.output == str(tmp_path / "o") and args.format == "auto"
    assert (args.min_count, args.max_vocab, args.window, args.sample) == (5, None, 5, 1e-3)
    assert (args.max_span, args.max_line_chars, args.num_shards, args.batch_lines) == (1000, 10_000_000, 0, 512)
    assert beam_args == ["--runner", "DirectRunner", "--direct_num_workers=2"]


def test_input_is_required_and_format_is_one_of_the_readers_formats(tmp_path, capsys):
    with pytest.raises(SystemExit):
        corpus_job.parse_args(["--output", str(tmp_path / "o")])
    assert "the following arguments are required: --input" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        corpus_job.parse_args(["--input", "x", "--output", str(tmp_path / "o"), "--format", "html"])
    assert "invalid choice: 'html'" in capsys.readouterr().err


def test_help_shows_each_default_once():
    text = " ".join(corpus_job.PARAMS.add_flags(corpus_job.new_parser("c", "d")).format_help().split())
    assert "leave out tokens seen fewer times (default 5)" in text
    assert "skip (and count) lines longer than this (default 10,000,000)" in text
    assert "0 = off (default 0.001)" in text and "(default None)" not in text


def test_the_run_config_section_is_the_job_flags_but_the_paths_and_format(tmp_path):
    assert corpus_job.PARAMS.config_keys() == ["min_count", "max_vocab", "window", "sample", "max_span",
                                               "max_line_chars", "num_shards", "batch_lines"]
    with pytest.raises(ValueError, match="corpus.max_span must be an integer >= 2, got 1"):
        corpus_job.PARAMS.from_mapping({"max_span": 1}, "corpus")
    section = corpus_job.PARAMS.from_mapping({"min_count": 2, "max_vocab": 100}, "corpus")
    argv = corpus_job.PARAMS.to_argv({**section, "input": ["a", "b"], "output": str(tmp_path / "o"),
                                      "format": "text"})
    args, beam_args = corpus_job.parse_args(argv)
    assert beam_args == [] and args.input == ["a", "b"] and args.format == "text"
    assert {k: getattr(args, k) for k in section} == section


def test_glob_matching_nothing_names_it(tmp_path):
    pattern = str(tmp_path / "nothing-*.txt")
    with pytest.raises(FileNotFoundError, match="nothing-\\*.txt matches no file"):
        corpus_job.match_inputs([pattern])


def test_binary_file_is_refused_by_name(tmp_path):
    good = fixtures.write(str(tmp_path / "good.txt"), "some text\n")
    binary = fixtures.write(str(tmp_path / "image.png"), b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(200))
    with pytest.raises(ValueError, match="image.png looks binary"):
        corpus_job.match_inputs([good, binary])


def test_only_empty_files_is_an_error(tmp_path):
    empty = fixtures.write(str(tmp_path / "empty.txt"), "")
    with pytest.raises(ValueError, match="every matched file is empty"):
        corpus_job.match_inputs([empty])


def test_output_that_is_a_file_is_refused(tmp_path):
    target = fixtures.write(str(tmp_path / "taken"), "x")
    with pytest.raises(ValueError, match="taken is a file"):
        corpus_job.parse_args(["--input", "x", "--output", target])


# ------------------------------------------------------------------------ PTransforms


def test_read_corpus_drops_markup_and_empty_lines_and_replaces_bad_utf8(tmp_path):
    wiki = fixtures.write(str(tmp_path / "a.txt.gz"), fixtures.TINY_WIKI, compress=True)
    bad = fixtures.write(str(tmp_path / "b.txt"), b"caf\xe9 au lait\n\nplain\n")
    with TestPipeline(runner="FnApiRunner") as p:
        paragraphs = p | corpus.ReadCorpus(files=[wiki, bad])
        assert_that(paragraphs, equal_to([
            "Cats", "The cat sat on the mat. The cat's mat!", "Dogs",
            "The dog sat; the dog ran. A dog-cat, the CAT.", "The dog don't... THE DOG",
            "caf\ufffd au lait", "plain"]))
    counters = corpus_job._counters(p.result)  # pylint: disable=protected-access
    assert counters["lines_skipped_markup"] == 4
    assert counters["lines_invalid_utf8"] == 1
    assert counters["lines_skipped_empty"] == 2


def test_read_corpus_reads_bz2_by_extension(tmp_path):
    import bz2  # pylint: disable=import-outside-toplevel
    path = str(tmp_path / "c.txt.bz2")
    with bz2.open(path, "wb") as f:
        f.write(b"first line\nsecond line\n")
    with TestPipeline(runner="FnApiRunner") as p:
        assert_that(p | corpus.ReadCorpus(files=[path]), equal_to(["first line", "second line"]))


def test_read_corpus_text_format_keeps_doc_lines(tmp_path):
    path = fixtures.write(str(tmp_path / "a.txt"), '<doc id="1">\nhello\n</doc>\n')
    with TestPipeline(runner="FnApiRunner") as p:
        assert_that(p | corpus.ReadCorpus(files=[path], fmt="text"),
                    equal_to(['<doc id="1">', "hello", "</doc>"]))


def test_read_corpus_validates_arguments():
    with pytest.raises(ValueError, match="at least one file"):
        corpus.ReadCorpus(files=[])
    with pytest.raises(ValueError, match="format must be one of"):
        corpus.ReadCorpus(files=["x"], fmt="html")


def test_tokenize_batches_paragraphs_into_record_batches():
    with TestPipeline(runner="FnApiRunner") as p:
        batches, config = p | beam.Create(["a b", "c", "d e f"]) | corpus.Tokenize(batch_lines=2)
        rows = batches | beam.FlatMap(lambda b: [r[0] for r in b.column(0).to_pylist()])
        sizes = batches | beam.Map(lambda b: b.num_rows)
        assert_that(rows, equal_to([b"a b", b"c", b"d e f"]), label="AllRows")
        assert_that(sizes | beam.combiners.Count.Globally(), equal_to([2]), label="TwoBatches")
    assert schema.TEXT_KEY in config.tensor_representations


def test_make_windows_removes_oov_and_counts_pairs():
    ids = pa.array([[0, 3, 1], [3, 3], [2, 0, 1, 2]], type=pa.large_list(pa.int64()))
    batch = pa.RecordBatch.from_arrays([ids], [schema.TOKEN_IDS_KEY])
    with TestPipeline(runner="FnApiRunner") as p:
        records = (p | beam.Create([(batch, {})])
                   | corpus.MakeWindows(oov_id=3, window=1, max_span=3)
                   | beam.Map(lambda r: tf.train.Example.FromString(r)
                              .features.feature[schema.TOKEN_IDS_KEY].int64_list.value[:]))
        assert_that(records, equal_to([[0, 1], [2, 0, 1], [2]]))
    counters = corpus_job._counters(p.result)  # pylint: disable=protected-access
    assert counters["tokens"] == 9 and counters["oov_tokens"] == 3 and counters["windows"] == 6
    # window 1: a run of n ids yields 2(n-1) pairs: 2 + 4 + 0.
    assert counters["pairs_full_window"] == 6


def test_write_windows_round_trip(tmp_path):
    prefix = str(tmp_path / schema.WINDOWS_DIR / schema.WINDOWS_PREFIX)
    records = [corpus.encode_window_record([i, i + 1]) for i in range(10)]
    with TestPipeline(runner="FnApiRunner") as p:
        _ = p | beam.Create(records) | corpus.WriteWindows(prefix=prefix, num_shards=3)
    files = sorted(os.listdir(tmp_path / schema.WINDOWS_DIR))
    assert files == [f"windows-0000{i}-of-00003.tfrecord" for i in range(3)]
    assert sorted(fixtures.read_windows(str(tmp_path))) == [[i, i + 1] for i in range(10)]


# ------------------------------------------------------------------------ whole runs


def test_tiny_corpus_end_to_end_matches_golden_info_and_hand_counts(tmp_path):
    out = _run(tmp_path, "--min-count", "2")
    assert os.path.exists(os.path.join(out, "COMPLETED"))
    vocab = fixtures.read_vocab(out)
    expected = sorted(((t, c) for t, c in fixtures.TINY_COUNTS.items() if c >= 2),
                      key=lambda e: (-e[1], e[0]))
    assert vocab == expected  # (-count, token): "mat" before "sat" at count 2
    tokens = fixtures.ids_to_tokens(fixtures.read_windows(out), vocab)
    assert sorted(tokens) == sorted([
        ["the", "cat", "sat", "the", "mat", "the", "mat"],
        ["the", "dog", "sat", "the", "dog", "dog", "cat", "the", "cat"],
        ["the", "dog", "the", "dog"]])

    info = outputs.read_info(out)
    with open(GOLDEN, encoding="utf-8") as f:
        golden = json.load(f)
    stable = {k: info[k] for k in golden}
    stable["windows"] = {k: info["windows"][k] for k in golden["windows"]}
    assert stable == golden
    assert info["inputs"]["files"][0]["path"].endswith("tiny.txt")
    assert len(info["inputs"]["fingerprint"]) == 64
    # The trainer checks the shards against these sizes before it reads them.
    windows = os.path.join(out, schema.WINDOWS_DIR)
    assert info["windows"]["shard_bytes"] == {n: os.path.getsize(os.path.join(windows, n))
                                              for n in sorted(os.listdir(windows))}


def test_transform_fn_maps_raw_text_to_the_same_ids(tmp_path):
    import tensorflow_transform as tft  # pylint: disable=import-outside-toplevel

    out = _run(tmp_path, "--min-count", "2")
    vocab = [t for t, _ in fixtures.read_vocab(out)]
    tf_output = tft.TFTransformOutput(out)
    ids = tf_output.transform_raw_features(
        {schema.TEXT_KEY: tf.constant(["The DOG sat, zebra!"])})[schema.TOKEN_IDS_KEY]
    oov = len(vocab)
    assert ids.to_list() == [[vocab.index("the"), vocab.index("dog"), vocab.index("sat"), oov]]


def test_max_vocab_keeps_most_frequent_with_token_order_at_ties(tmp_path):
    out = _run(tmp_path, "--min-count", "1", "--max-vocab", "4")
    assert fixtures.read_vocab(out) == [("the", 8), ("dog", 5), ("cat", 3), ("mat", 2)]


def test_min_count_leaving_empty_vocabulary_fails_without_output(tmp_path):
    with pytest.raises(ValueError, match="--min-count 100 leaves an empty vocabulary"):
        _run(tmp_path, "--min-count", "100")
    assert os.listdir(tmp_path) == ["in"]  # neither the output nor a staging directory


def test_rerun_replaces_previous_output(tmp_path):
    first = _run(tmp_path, "--min-count", "1")
    stale = os.path.join(first, "windows", "stale-from-older-run.tfrecord")
    fixtures.write(stale, "x")
    _run(tmp_path, "--min-count", "2")
    assert not os.path.exists(stale)
    assert outputs.read_info(first)["parameters"]["min_count"] == 2
    assert sorted(os.listdir(tmp_path)) == ["in", "out"]


def test_bad_lines_are_counted_and_the_rest_is_kept(tmp_path):
    text = fixtures.write(str(tmp_path / "in" / "ok.txt"), "the cat sat\nthe cat ran\n")
    # The over-long line comes first so that the NUL byte lies past the binary sniff.
    bad = fixtures.write(str(tmp_path / "in" / "bad.txt"),
                         b"the \xff\xfe cat\n" + b"pad " * 2500 + b"\nnul \x00 inside\n")
    empty = fixtures.write(str(tmp_path / "in" / "empty.txt"), "")
    out = _run(tmp_path, "--min-count", "1", "--max-line-chars", "100", inputs=[text, bad, empty])
    counts = outputs.read_info(out)["counts"]
    assert counts["lines_invalid_utf8"] == 1
    assert counts["lines_skipped_binary"] == 1
    assert counts["lines_skipped_too_long"] == 1
    assert dict(fixtures.read_vocab(out)) == {"the": 3, "cat": 3, "sat": 1, "ran": 1}


def test_fifty_megabyte_line_without_newline_is_skipped_and_counted(tmp_path):
    path = str(tmp_path / "in" / "huge.txt")
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as f:
        f.write(b"the cat sat\n")
        chunk = b"word " * 200_000  # 1 MB
        for _ in range(50):
            f.write(chunk)
    out = _run(tmp_path, "--min-count", "1", inputs=[path])
    counts = outputs.read_info(out)["counts"]
    assert counts["lines_skipped_too_long"] == 1
    assert dict(fixtures.read_vocab(out)) == {"the": 1, "cat": 1, "sat": 1}


def test_multi_processing_direct_runner_gives_the_same_output(tmp_path):
    out = _run(tmp_path, "--min-count", "2", "--direct_running_mode=multi_processing",
               "--direct_num_workers=2")
    vocab = fixtures.read_vocab(out)
    assert dict(vocab) == {t: c for t, c in fixtures.TINY_COUNTS.items() if c >= 2}
    assert sum(len(r) for r in fixtures.read_windows(out)) == sum(c for _, c in vocab)


def test_later_jobs_refuse_a_directory_without_completed(tmp_path):
    out = _run(tmp_path, "--min-count", "2")
    os.remove(os.path.join(out, "COMPLETED"))
    with pytest.raises(FileNotFoundError, match="no COMPLETED marker"):
        outputs.require_completed(out, "--corpus", schema.PRODUCER)
