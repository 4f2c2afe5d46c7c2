"""Digits job: layer strings, the three readers on tiny real-format files, the Beam job,
and a short end-to-end run served from its SavedModel alone."""

import gzip
import json
import logging
import os
import shutil
import struct

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that

from embedflow import cli
from jobs import digits as digits_job
from pipelines import digits
from schemas import artifacts as artifact_names
from schemas import digits as schema
from trainer import common
from trainer import digits as trainer

SAMPLE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "sample", "digits", "optdigits")


# ---------------------------------------------------------------- tiny real-format files


def random_bitmap(rng):
    return (rng.random((32, 32)) < 0.3).astype(np.uint8)


def optdigits_text(digits_, header="3\n"):
    """optdigits-orig layout: header, then per digit 32 rows of 0/1 and a ' N' label line."""
    lines = [header.rstrip("\n")] if header else []
    for bitmap, label in digits_:
        lines += ["".join(str(v) for v in row) for row in bitmap] + [f" {label}"]
    return "\n".join(lines) + "\n"


WINDEP_HEADER = ("BU handwritten digit database: E Alpaydin C Kaynak 1995\nWriter-independent test "
                 "file\n\nentwidth = 32\nentheight = 32\ndepth = 1\nntot = 2\n")


def write_file(path, data, compress=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = data.encode("ascii") if isinstance(data, str) else data
    with (gzip.open(path, "wb") if compress else open(path, "wb")) as f:
        f.write(data)
    return str(path)


def idx_bytes(array):
    array = np.asarray(array, np.uint8)
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_png(path, pixels):
    pixels = np.asarray(pixels, np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    return write_file(path, tf.io.encode_png(pixels).numpy())


def read_optdigits(path):
    skipped = []
    with digits.open_binary(path) as f:
        found = list(digits.parse_optdigits(f, path, skipped.append))
    return found, skipped


# ----------------------------------------------------------------------- layer strings


@pytest.mark.parametrize("text, sizes", [
    ("1024-512-10", (1024, 512, 10)),
    ("1024-10", (1024, 10)),
    ("1024-512-256-10", (1024, 512, 256, 10)),
    (" 1024 - 64 - 10 ", (1024, 64, 10)),
])
def test_parse_layers(text, sizes):
    assert trainer.parse_layers(text) == sizes


@pytest.mark.parametrize("text, message", [
    ("1024-0-10", "every layer size must be positive"),
    ("784-512-10", "the first size must be 1024"),
    ("1024-512-9", "the last size must be 10"),
    ("1024", "needs at least the input and output sizes"),
    ("1024--512-10", "joined by '-'"),
    ("1024-512-10-", "joined by '-'"),
    ("1024-5x-10", "joined by '-'"),
    ("1024,512,10", "joined by '-'"),
    ("", "joined by '-'"),
])
def test_parse_layers_rejects_with_the_string_named(text, message):
    with pytest.raises(ValueError) as e:
        trainer.parse_layers(text)
    assert str(e.value).startswith(f"--layers {text!r}: ")
    assert message in str(e.value)


def checked_config(**values):
    """A DigitsConfig built as the flags build it, errors naming the flags."""
    return trainer.DigitsConfig.check(values, trainer.DigitsConfig.flag_of)


def test_layers_error_message_matches_the_documented_one():
    with pytest.raises(ValueError, match=r"^--layers '1024-0-10': every layer size must be positive$"):
        checked_config(layers="1024-0-10")


def test_build_model_is_the_layer_string():
    config = trainer.DigitsConfig(layers="1024-32-16-10", seed=3)
    model = trainer.build_model(config)
    assert common.count_params(model) == (1024 * 32 + 32) + (32 * 16 + 16) + (16 * 10 + 10)
    dense = [l for l in model.layers if l.__class__.__name__ == "Dense"]
    assert [l.units for l in dense] == [32, 16, 10]
    assert [l.activation.__name__ for l in dense] == ["relu", "relu", "softmax"]
    assert [l.rate for l in model.layers if l.__class__.__name__ == "Dropout"] == [0.5, 0.5]
    x = np.random.default_rng(0).random((5, 1024)).astype(np.float32)
    probabilities = model(x, training=False).numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(model(x, training=False).numpy(), probabilities)  # no dropout
    assert not np.allclose(model(x, training=True).numpy(), probabilities)  # dropout
    plain = trainer.build_model(trainer.DigitsConfig(layers="1024-32-16-10", seed=3, dropout=0.0))
    assert not [l for l in plain.layers if l.__class__.__name__ == "Dropout"]
    np.testing.assert_array_equal(plain(x, training=True).numpy(), plain(x, training=False).numpy())
    # Deterministic per seed, different across seeds.
    same = trainer.build_model(config)
    other = trainer.build_model(trainer.DigitsConfig(layers="1024-32-16-10", seed=4))
    np.testing.assert_array_equal(model.weights[0].numpy(), same.weights[0].numpy())
    assert not np.array_equal(model.weights[0].numpy(), other.weights[0].numpy())


@pytest.mark.parametrize("kwargs, message", [
    ({"epochs": 0}, "--epochs must be >= 1, got 0"),
    ({"batch_size": 0}, "--batch-size must be >= 1, got 0"),
    ({"learning_rate": 0.0}, "--learning-rate must be > 0"),
    ({"dropout": 1.0}, r"--dropout must be in \[0, 1\), got 1.0"),
    ({"lr_decay_factor": 0.0}, "--lr-decay-factor must be in"),
])
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        checked_config(**kwargs)


def test_parameter_budget_warns_below_ten_examples_per_parameter():
    ratio, line, warning = common.parameter_budget(1_000, 9_999)
    assert ratio == pytest.approx(9.999)
    assert "1,000 parameters" in line and "9,999 training examples" in line
    assert "below the rule of thumb of 10 (the data supports about 999 parameters)" in warning
    assert common.parameter_budget(1_000, 10_000)[2] is None


def test_classification_metrics_by_hand():
    labels = [0, 0, 1, 1, 1, 2]
    predicted = [0, 1, 1, 1, 0, 1]
    m = common.classification_metrics(labels, predicted, 4)
    assert m["accuracy"] == pytest.approx(3 / 6)
    assert m["confusion_matrix"] == [[1, 1, 0, 0], [1, 2, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
    assert m["precision"][:2] == [pytest.approx(1 / 2), pytest.approx(2 / 4)]
    assert m["recall"][:3] == [pytest.approx(1 / 2), pytest.approx(2 / 3), 0.0]
    assert m["precision"][2] is None and m["precision"][3] is None and m["recall"][3] is None


# --------------------------------------------------------------------------- optdigits


@pytest.mark.parametrize("header, compress, trailer", [
    ("3\n", True, ""),  # .tra/.tes: a count line
    (WINDEP_HEADER, False, "EOF"),  # .windep: key = value lines, EOF at the end
])
def test_optdigits_reader(tmp_path, header, compress, trailer):
    rng = np.random.default_rng(2)
    bitmaps = [random_bitmap(rng) for _ in range(3)]
    text = optdigits_text(zip(bitmaps, [7, 0, 1]), header) + trailer
    path = write_file(tmp_path / "optdigits-orig.tra", text, compress)
    found, skipped = read_optdigits(path)
    assert skipped == []
    assert [label for _, label in found] == [7, 0, 1]
    for (image, _), bitmap in zip(found, bitmaps):
        assert image.dtype == np.float32 and image.shape == (32, 32)
        np.testing.assert_array_equal(image, bitmap.astype(np.float32))


def test_optdigits_reader_skips_wrong_width_and_cut_off_digits(tmp_path):
    rng = np.random.default_rng(3)
    good, narrow = random_bitmap(rng), random_bitmap(rng)
    text = optdigits_text([(narrow, 3), (good, 4)])
    lines = text.split("\n")
    lines[1 + 5] = lines[1 + 5][:31]  # row 6 of the first digit is 31 wide
    text = "\n".join(lines) + "\n".join("0" * 32 for _ in range(10))  # a digit cut off
    found, skipped = read_optdigits(write_file(tmp_path / "d.tes", text))
    assert [label for _, label in found] == [4]
    np.testing.assert_array_equal(found[0][0], good)
    assert sorted(skipped) == ["truncated", "wrong_size"]


def test_optdigits_reader_names_the_line_of_a_malformed_file(tmp_path):
    rng = np.random.default_rng(4)
    text = optdigits_text([(random_bitmap(rng), 3)], header="1\n").replace(" 3\n", "x\n")
    with pytest.raises(ValueError, match=r"d.tes:34: expected the label line after 32 bitmap rows"):
        read_optdigits(write_file(tmp_path / "d.tes", text))


def test_optdigits_reader_on_the_bundled_real_file():
    found, skipped = read_optdigits(os.path.join(SAMPLE, "optdigits-orig.tes.gz"))
    assert skipped == [] and len(found) == 946  # the count in the file's header
    labels = np.array([label for _, label in found])
    assert np.bincount(labels).tolist() == [87, 97, 92, 85, 114, 108, 87, 96, 91, 89]
    assert {float(v) for v in np.unique(np.stack([i for i, _ in found]))} == {0.0, 1.0}


# ------------------------------------------------------------------------------- MNIST


@pytest.mark.parametrize("compress", [True, False])
def test_idx_reader_centres_28x28_in_32x32(tmp_path, compress):
    rng = np.random.default_rng(5)
    images = rng.integers(1, 256, size=(3, 28, 28), dtype=np.uint8)
    labels = np.array([5, 0, 9], np.uint8)
    suffix = ".gz" if compress else ""
    write_file(tmp_path / f"train-images-idx3-ubyte{suffix}", idx_bytes(images), compress)
    write_file(tmp_path / f"train-labels-idx1-ubyte{suffix}", idx_bytes(labels), compress)
    sources, _ = digits.list_sources([str(tmp_path)], "mnist", None, "--input")
    assert len(sources) == 1 and sources[0].paths[0].endswith(f"train-images-idx3-ubyte{suffix}")
    found = list(digits.read_idx_pair(*sources[0].paths))
    assert [label for _, label in found] == [5, 0, 9]
    for (image, _), original in zip(found, images):
        assert image.shape == (32, 32) and image.dtype == np.float32
        np.testing.assert_allclose(image[2:30, 2:30], original / 255.0, rtol=1e-6)
        border = image.copy()
        border[2:30, 2:30] = 0
        assert not border.any()


def test_idx_files_pair_by_name(tmp_path):
    for prefix, n in (("train", 3), ("t10k", 2)):
        write_file(tmp_path / f"{prefix}-images-idx3-ubyte.gz", idx_bytes(np.zeros((n, 28, 28))), True)
        write_file(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", idx_bytes(np.zeros(n)), True)
    pairs = digits.pair_idx_files(sorted(str(p) for p in tmp_path.iterdir()), "--input")
    assert [tuple(os.path.basename(p) for p in pair) for pair in pairs] == [
        ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
        ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")]


def _idx_error(tmp_path, images_data, labels_data, compress=False):
    images = write_file(tmp_path / "x-images-idx3-ubyte", images_data, compress)
    labels = write_file(tmp_path / "x-labels-idx1-ubyte", labels_data, compress)
    with pytest.raises(ValueError) as e:
        digits.pair_idx_files([images, labels], "--input")
    return str(e.value)


def test_idx_errors_are_clear(tmp_path):
    rng = np.random.default_rng(6)
    images = idx_bytes(np.zeros((4, 28, 28)))
    labels = idx_bytes(np.zeros(4))
    assert "is truncated: its header promises 4 images (3136 bytes of data), it holds 3000 bytes" \
        in _idx_error(tmp_path, images[:16 + 3000], labels)
    noise = idx_bytes(rng.integers(0, 256, size=(4, 28, 28)))
    assert "x-images-idx3-ubyte: the gzip data is truncated or corrupt" in _idx_error(
        tmp_path, gzip.compress(noise)[:-30], gzip.compress(labels))
    assert "5 bytes follow the 4 labels" in _idx_error(tmp_path, images, labels + b"\0" * 5)
    assert "is not an IDX file" in _idx_error(tmp_path, b"P5\n28 28\n", labels)
    assert "is not unsigned byte" in _idx_error(tmp_path, images[:2] + b"\x0d" + images[3:], labels)
    assert "images are 33x33, larger than the 32x32" in _idx_error(
        tmp_path, idx_bytes(np.zeros((4, 33, 33))), labels)
    assert "holds 4 images but" in _idx_error(tmp_path, images, idx_bytes(np.zeros(3)))
    os.remove(tmp_path / "x-labels-idx1-ubyte")
    with pytest.raises(ValueError, match="no matching IDX images/labels file for .*x-images-idx3-ubyte"):
        digits.pair_idx_files([str(tmp_path / "x-images-idx3-ubyte")], "--input")


# --------------------------------------------------------------------------------- PNG


def test_png_reader_converts_to_grey_and_resizes(tmp_path):
    rng = np.random.default_rng(7)
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[:, :32] = 255  # left half white
    image = digits.decode_png(tf.io.encode_png(rgb).numpy())
    assert image.shape == (32, 32) and image.dtype == np.float32
    np.testing.assert_allclose(image[:, :15], 1.0, atol=1e-6)
    np.testing.assert_allclose(image[:, 17:], 0.0, atol=1e-6)
    grey = rng.integers(0, 256, size=(32, 32), dtype=np.uint8)
    np.testing.assert_allclose(digits.decode_png(tf.io.encode_png(grey[:, :, None]).numpy()),
                               grey / 255.0, rtol=1e-6)
    with pytest.raises(ValueError, match="not a PNG image"):
        digits.decode_png(b"GIF89a not a png")


def test_png_folder_labels_come_from_subfolders(tmp_path):
    write_png(tmp_path / "3" / "a.png", np.zeros((8, 8)))
    write_png(tmp_path / "3" / "b.PNG", np.zeros((8, 8)))
    write_png(tmp_path / "7" / "c.png", np.zeros((8, 8)))
    write_file(tmp_path / "7" / "notes.txt", "not an image")
    write_png(tmp_path / ".cache" / "d.png", np.zeros((8, 8)))
    sources, _ = digits.list_sources([str(tmp_path)], "png", schema.EVAL, "--eval-input")
    assert [(os.path.basename(s.paths[0]), s.label, s.split) for s in sources] == [
        ("a.png", 3, "eval"), ("b.PNG", 3, "eval"), ("c.png", 7, "eval")]
    write_png(tmp_path / "cat" / "e.png", np.zeros((8, 8)))
    with pytest.raises(ValueError, match="subfolder 'cat' is not a label"):
        digits.list_sources([str(tmp_path)], "png", None, "--input")


def test_missing_input_is_an_error_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--input .*nothing-\*.gz matches no file"):
        digits.list_sources([str(tmp_path / "nothing-*.gz")], "optdigits", None, "--input")


# ------------------------------------------------------------------------------- Beam


def test_hash_split_is_deterministic_and_near_the_fraction():
    rng = np.random.default_rng(8)
    images = rng.random((2000, 32, 32)).astype(np.float32)
    splits = [digits.hash_split(image, i % 10, 0.25) for i, image in enumerate(images)]
    assert 0.21 < splits.count(schema.EVAL) / len(splits) < 0.29
    again = [digits.hash_split(images[i].copy(), i % 10, 0.25) for i in reversed(range(2000))]
    assert again[::-1] == splits
    # The label is part of the key: relabelling moves some images.
    moved = [digits.hash_split(image, (i + 1) % 10, 0.25) for i, image in enumerate(images)]
    assert moved != splits


def _read_examples(files):
    found = []
    for record in tf.data.TFRecordDataset(files, compression_type=schema.EXAMPLES_COMPRESSION):
        parsed = tf.io.parse_single_example(record, schema.FEATURE_SPEC)
        found.append((parsed[schema.IMAGE_KEY].numpy(), int(parsed[schema.LABEL_KEY])))
    return found


def _close_to(expected):
    """A Beam matcher: (split, label, value) elements, values equal to a float tolerance."""
    def check(actual):
        actual = sorted(actual, key=lambda e: e[1])
        assert [e[:2] for e in actual] == [e[:2] for e in expected]
        np.testing.assert_allclose([e[2] for e in actual], [e[2] for e in expected], rtol=1e-5)
    return check


def test_pipeline_reads_every_format_and_writes_examples(tmp_path):
    rng = np.random.default_rng(9)
    bitmaps = [random_bitmap(rng) for _ in range(3)]
    write_file(tmp_path / "in" / "opt.tra", optdigits_text(zip(bitmaps, [1, 2, 12])))  # 12: skipped
    mnist = rng.integers(0, 256, size=(2, 28, 28), dtype=np.uint8)
    write_file(tmp_path / "mnist" / "t-images-idx3-ubyte", idx_bytes(mnist))
    write_file(tmp_path / "mnist" / "t-labels-idx1-ubyte", idx_bytes([4, 5]))
    png = rng.integers(0, 256, size=(32, 32), dtype=np.uint8)
    write_png(tmp_path / "png" / "6" / "x.png", png)
    write_file(tmp_path / "png" / "6" / "broken.png", b"\x89PNG broken")

    sources = (digits.list_sources([str(tmp_path / "in")], "optdigits", schema.TRAIN, "--input")[0]
               + digits.list_sources([str(tmp_path / "mnist")], "mnist", schema.TRAIN, "--input")[0]
               + digits.list_sources([str(tmp_path / "png")], "png", schema.EVAL, "--eval-input")[0])
    args, _ = digits_job.parse_args(["--input", "unused", "--format", "png", "--output", "unused",
                                 "--eval-input", "unused", "--num-shards", "2"])
    examples_dir = str(tmp_path / "examples")
    with test_pipeline.TestPipeline(runner="FnApiRunner") as p:
        read = p | "Read" >> digits.ReadDigits(sources=sources)
        # Pixel sums identify the images.
        summary = read | beam.MapTuple(lambda split, image, label: (split, label, float(image.sum())))
        assert_that(summary, _close_to([
            ("train", 1, bitmaps[0].sum()), ("train", 2, bitmaps[1].sum()),
            ("train", 4, mnist[0].sum() / 255), ("train", 5, mnist[1].sum() / 255),
            ("eval", 6, png.sum() / 255)]), label="CheckRead")
        digits_job.build(p, args, sources, examples_dir)
    counts = digits_job.counters(p.result)
    assert counts["skipped_label_out_of_range"] == 2  # once per pipeline branch
    assert counts["skipped_unreadable"] == 2
    assert counts["examples_train"] == 4 and counts["examples_eval"] == 1

    train_files = digits_job.example_files(examples_dir, schema.TRAIN)
    assert [os.path.basename(f) for f in train_files] == [
        f"train-0000{i}-of-00002{schema.EXAMPLES_SUFFIX}" for i in range(2)]
    train = sorted(_read_examples(train_files), key=lambda e: e[1])
    assert [label for _, label in train] == [1, 2, 4, 5]
    np.testing.assert_array_equal(train[0][0], bitmaps[0].reshape(-1))
    np.testing.assert_allclose(train[2][0].reshape(32, 32)[2:30, 2:30], mnist[0] / 255.0, rtol=1e-6)
    (image, label), = _read_examples(digits_job.example_files(examples_dir, schema.EVAL))
    assert label == 6
    np.testing.assert_allclose(image, png.reshape(-1) / 255.0, rtol=1e-6)


# ------------------------------------------------------------------------ whole job


def _run_cli(argv):
    return cli.run_job("digits", digits_job.run, argv)


def test_bad_layers_fail_before_any_work(tmp_path, capsys):
    out = tmp_path / "out"
    status = _run_cli(["--input", os.path.join(SAMPLE, "optdigits-orig.tes.gz"), "--format",
                       "optdigits", "--output", str(out), "--layers", "1024-0-10"])
    assert status == 2
    assert "embedflow digits: error: --layers '1024-0-10': every layer size must be positive" \
        in capsys.readouterr().err
    assert not os.path.exists(out) and os.listdir(tmp_path) == []


def test_empty_eval_split_leaves_no_output(tmp_path, capsys):
    header_only = write_file(tmp_path / "empty.tes", "0\n")
    out = tmp_path / "out"
    status = _run_cli(["--input", os.path.join(SAMPLE, "optdigits-orig.tes.gz"), "--format",
                       "optdigits", "--eval-input", header_only, "--output", str(out)])
    assert status == 2
    assert "the eval split is empty" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["empty.tes"]


def test_a_digit_missing_from_train_or_too_many_skips_leave_no_output(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    rng = np.random.default_rng(10)
    every_digit = write_file(tmp_path / "eval.tes", optdigits_text(
        [(random_bitmap(rng), label) for label in range(10)]))
    no_nine = write_file(tmp_path / "train.tra", optdigits_text(
        [(random_bitmap(rng), label % 9) for label in range(27)]))
    base = ["--input", no_nine, "--eval-input", every_digit, "--format", "optdigits",
            "--output", str(tmp_path / "out")]
    with pytest.raises(ValueError, match=r"^the train split holds no example of class 9 \(per class: "
                                         r"0 3, 1 3, .* 8 3, 9 0; classes from the digits 0 \.\.\. 9\)"):
        digits_job.run(base)
    assert "digits: train split: 27 examples (per class: 0 3, 1 3," in caplog.text
    # Labels out of range are skipped; 3 of 30 digits is more than 5%.
    out_of_range = write_file(tmp_path / "train.tra", optdigits_text(
        [(random_bitmap(rng), label) for label in list(range(10)) * 2 + [11, 12, 13]]))
    with pytest.raises(ValueError, match=r"3 of the 33 digits read were skipped \(9.1%; "
                                         r"label_out_of_range 3\), more than --max-skipped-fraction 0.05"):
        digits_job.run(["--input", out_of_range, "--eval-input", every_digit, "--format", "optdigits",
                        "--output", str(tmp_path / "out"), "--max-skipped-fraction", "0.05"])
    assert "digits: skipped 3 digits: label_out_of_range 3" in caplog.text
    assert sorted(os.listdir(tmp_path)) == ["eval.tes", "train.tra"]


def test_end_to_end_train_then_serve_from_the_saved_model_alone(tmp_path, capsys):
    out = str(tmp_path / "digits")
    test_file = os.path.join(SAMPLE, "optdigits-orig.tes.gz")
    digits_job.run(["--input", os.path.join(SAMPLE, "optdigits-orig.tra.gz"), "--eval-input", test_file,
                "--format", "optdigits", "--output", out, "--layers", "1024-64-10",
                "--epochs", "12", "--batch-size", "32", "--patience", "2", "--seed", "1"])
    printed = capsys.readouterr().out
    params = 1024 * 64 + 64 + 64 * 10 + 10
    assert f"digits: model 1024-64-10: {params:,} parameters, 1,934 training examples: " \
           f"{1934 / params:.3g} examples per parameter" in printed
    assert "WARNING: only 0.0292 training examples per parameter" in printed
    assert "train accuracy" in printed and "gap" in printed

    assert os.path.exists(os.path.join(out, artifact_names.COMPLETED_FILE))
    info = json.load(open(os.path.join(out, artifact_names.INFO_FILE), encoding="utf-8"))
    assert info["counts"]["examples_train"] == 1934 and info["counts"]["examples_eval"] == 946
    assert info["model"]["parameters"] == params
    assert info["model"]["examples_per_parameter"] == pytest.approx(1934 / params)
    metrics = json.load(open(os.path.join(out, schema.METRICS_FILE), encoding="utf-8"))
    assert metrics["examples"] == 946 and metrics["accuracy"] >= 0.9
    assert np.array(metrics["confusion_matrix"]).sum() == 946
    assert len(metrics["precision"]) == len(metrics["recall"]) == 10
    assert metrics["accuracy_gap"] == pytest.approx(metrics["train"]["accuracy"] - metrics["accuracy"])
    assert 1 <= metrics["best_epoch"] <= metrics["epochs_run"] <= 12
    for plot in (schema.CONFUSION_MATRIX_PLOT, schema.LEARNING_CURVES_PLOT):
        with open(os.path.join(out, plot), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"

    shutil.rmtree(os.path.join(out, schema.EXAMPLES_DIR))
    images, labels = zip(*read_optdigits(test_file)[0])
    images = np.stack(images)
    model = tf.saved_model.load(os.path.join(out, schema.MODEL_DIR))
    probabilities = getattr(model, schema.SERVE_ENDPOINT)(tf.constant(images.reshape(-1, 1024))).numpy()
    assert probabilities.shape == (946, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    accuracy = float(np.mean(probabilities.argmax(axis=1) == np.array(labels)))
    assert accuracy == pytest.approx(metrics["accuracy"], abs=2e-3)
    as_images = getattr(model, schema.SERVE_IMAGES_ENDPOINT)(tf.constant(images[:5])).numpy()
    np.testing.assert_allclose(as_images, probabilities[:5], rtol=1e-5, atol=1e-7)
    served = model.signatures["serving_default"](tf.constant(images[:5].reshape(-1, 1024)))
    np.testing.assert_allclose(next(iter(served.values())).numpy(), probabilities[:5],
                               rtol=1e-5, atol=1e-7)
