"""The labelled-example jobs' shared checks and parameters: classes, skips, run config sections."""

import logging

import pytest

from jobs import digits as digits_job
from jobs import labelled
from jobs import sentiment as sentiment_job
from trainer import common

LABELS = ("neg", "pos")


def test_a_missing_class_is_an_error_naming_the_set_the_counts_and_the_labels():
    with pytest.raises(ValueError, match=r"^the train split holds no example of class pos \(per class: "
                                         r"neg 28, pos 0; classes from --labels neg,pos\)"):
        common.check_classes([28, 0], LABELS, "the train split", named_by="--labels neg,pos")


def test_imbalance_is_warned_of_and_a_missing_class_too_where_not_required(caplog):
    common.check_classes([60, 40], LABELS, "the train split", named_by="--labels neg,pos")
    assert not caplog.records
    common.check_classes([95, 5], LABELS, "the train split", named_by="--labels neg,pos")
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert "the train split is imbalanced: class pos holds less than 10% of its 100 examples " \
           "(per class: neg 95, pos 5)" in record.getMessage()
    caplog.clear()
    common.check_classes([30, 0], LABELS, "the test set of fold 1", named_by="--labels neg,pos",
                         required=False)
    assert "the test set of fold 1 is imbalanced: class pos" in caplog.text
    # Ten classes: rare is below 2% (a fifth of an even share), not below 10%.
    caplog.clear()
    common.check_classes([100] * 9 + [50], range(10), "the train split", named_by="the digits")
    assert not caplog.records
    common.check_classes([100] * 9 + [10], range(10), "the train split", named_by="the digits")
    assert "class 9 holds less than 2%" in caplog.text


def _sentiment_params(*flags):
    params, _ = sentiment_job.parse_args(["--input", "x.tsv", "--format", "tsv", "--corpus", "c",
                                          "--embeddings", "e", "--output", "unused-out", *flags])
    return params


JOB = labelled.Job(name="sentiment", namespace="test", item="text", classes=LABELS,
                   classes_named_by="--labels neg,pos", split_by_hash=False, list_sources=None,
                   build=None, train=None)


def test_skipped_rows_above_the_threshold_are_an_error_unless_allowed():
    counts = {"examples_train": 80, "skipped_unknown_label": 15, "skipped_empty": 5,
              "skipped_malformed": 0, "texts_read": 95}
    with pytest.raises(ValueError, match=r"^20 of the 100 texts read were skipped \(20.0%; empty 5, "
                                         r"unknown_label 15\), more than --max-skipped-fraction 0.1: "
                                         r".* or pass --max-skipped-fraction 0.2 to train on the rest$"):
        labelled.check_skipped(JOB, _sentiment_params(), counts)
    labelled.check_skipped(JOB, _sentiment_params("--max-skipped-fraction", "0.2"), counts)
    labelled.check_skipped(JOB, _sentiment_params(), {**counts, "skipped_unknown_label": 3})
    with pytest.raises(ValueError, match=r"--max-skipped-fraction must be in \[0, 1\], got 1.5"):
        _sentiment_params("--max-skipped-fraction", "1.5")


def test_the_counts_are_logged_per_split_class_and_skip_reason(caplog):
    caplog.set_level(logging.INFO)
    labelled.log_counts(JOB, {"examples_train_class_0": 7, "examples_train_class_1": 3,
                              "examples_eval_class_1": 2, "skipped_empty": 4, "skipped_malformed": 0})
    assert "sentiment: train split: 10 examples (per class: neg 7, pos 3)" in caplog.text
    assert "sentiment: eval split: 2 examples (per class: neg 0, pos 2)" in caplog.text
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "sentiment: skipped 4 texts: empty 4"]


def test_run_config_sections_leave_conditional_defaults_to_the_job():
    section = sentiment_job.PARAMS.from_mapping({"folds": 3, "epochs": 2}, "sentiment")
    assert section["folds"] == 3 and section["eval_fraction"] is None and section["encoding"] is None
    argv = sentiment_job.PARAMS.to_argv(section)
    params, _ = sentiment_job.parse_args(
        ["--input", "p", "--format", "polarity", "--corpus", "c", "--embeddings", "e",
         "--output", "unused-out", *argv])
    assert (params.folds, params.eval_fraction, params.epochs, params.encoding) == (3, None, 2, "latin-1")
    with pytest.raises(ValueError, match="give only one of --eval-fraction, --folds"):
        sentiment_job.PARAMS.from_mapping({"folds": 3, "eval_fraction": 0.2}, "sentiment")
    with pytest.raises(ValueError, match=r"sentiment.curve_sizes '10,x': expected sizes"):
        sentiment_job.PARAMS.from_mapping({"curve_sizes": "10,x"}, "sentiment")
    # Digits: the run passes --eval-input itself, so no --eval-fraction may come with it.
    digits = digits_job.PARAMS.from_mapping({"layers": "1024-32-10"}, "digits")
    assert digits["eval_fraction"] is None and digits_job.PARAMS.to_argv(digits) == ["--layers", "1024-32-10"]
    # A section holding every key at its default (None for the derived ones) derives nothing
    # from the stand-ins of --format and --eval-input.
    full = sentiment_job.PARAMS.from_mapping({**sentiment_job.PARAMS.defaults(), "epochs": 2}, "sentiment")
    assert full["encoding"] is None and full["eval_fraction"] is None
    assert sentiment_job.PARAMS.to_argv(full) == ["--epochs", "2"]
    full = digits_job.PARAMS.from_mapping(digits_job.PARAMS.defaults(), "digits")
    assert digits_job.PARAMS.to_argv(full) == []
    with pytest.raises(ValueError, match=r"digits.layers '1024-32-9': the last size must be 10"):
        digits_job.PARAMS.from_mapping({"layers": "1024-32-9"}, "digits")


def test_every_default_is_the_declared_one_in_flags_and_info():
    params = _sentiment_params("--freeze")
    assert params.fine_tune is False and params.fine_tune_rate == 0.1 and params.epochs == 40
    assert params.class_names == LABELS and params.curve_size_values == (100, 300, 1000, 3000)
    info = params.info_parameters()
    assert info["labels"] == ["neg", "pos"] and info["curve_sizes"] == [100, 300, 1000, 3000]
    assert set(info) == set(sentiment_job.PARAMS.config_keys())
    digits, _ = digits_job.parse_args(["--input", "x", "--format", "png", "--output", "unused-out"])
    assert digits.info_parameters()["layer_sizes"] == [1024, 512, 10]
    assert (digits.epochs, digits.num_shards, digits.eval_fraction) == (30, 4, 0.1)
