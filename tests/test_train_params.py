"""The train job's parameters: one TrainConfig declaration gives the flags, help, checks and run config."""

import pytest

from core.params import new_parser
from jobs import train as train_job
from trainer import skipgram


def _parse(tmp_path, *flags):
    return train_job.parse_args(["--corpus", "c", "--output", str(tmp_path / "o"), *flags])


def test_flags_keep_their_names_and_word2vec_defaults(tmp_path):
    config = _parse(tmp_path)
    assert (config.corpus, config.output) == ("c", str(tmp_path / "o"))
    assert (config.dim, config.epochs, config.negatives, config.learning_rate) == (100, 5, 5, 0.025)
    assert (config.batch_size, config.noise_per_centre, config.window, config.sample) == (None,) * 4
    assert (config.kernel, config.strategy, config.seed, config.checkpoint_every_steps) == ("auto", "auto", 1, 2000)
    assert (config.model, config.subwords, config.min_n, config.max_n, config.buckets) == (
        "skipgram", False, 3, 6, 2_000_000)
    assert config.subword_spec() is None
    assert config.describe_model() == {"family": "skipgram", "subwords": None}
    config = _parse(tmp_path, "--noise-per-centre", "7", "--kernel", "tf", "--max-steps", "3",
                    "--init-from", "old", "--window", "2", "--sample", "0")
    assert (config.noise_per_centre, config.kernel, config.max_steps) == (7, "tf", 3)
    assert (config.init_from, config.window, config.sample) == ("old", 2, 0.0)


def test_the_model_sets_the_default_learning_rate_and_subwords_their_rule(tmp_path):
    assert _parse(tmp_path, "--model", "cbow").learning_rate == 0.05  # word2vec's -alpha for -cbow 1
    assert _parse(tmp_path, "--model", "cbow", "--learning-rate", "0.01").learning_rate == 0.01
    config = _parse(tmp_path, "--subwords", "--min-n", "2", "--max-n", "4", "--buckets", "100")
    assert config.learning_rate == 0.025
    assert config.describe_model() == {"family": "skipgram", "subwords": {"min_n": 2, "max_n": 4, "buckets": 100}}
    with pytest.raises(ValueError, match=r"--max-n must be >= --min-n \(4\), got 3"):
        _parse(tmp_path, "--subwords", "--min-n", "4", "--max-n", "3")
    with pytest.raises(ValueError, match="--buckets must be >= 1, got 0"):
        _parse(tmp_path, "--subwords", "--buckets", "0")


def test_help_lists_each_default_once_and_hides_max_steps():
    text = " ".join(train_job.PARAMS.add_flags(new_parser("embedflow train", "t")).format_help().split())
    assert "--max-steps" not in text
    assert "unset: 0.025 with --model skipgram, 0.05 with cbow" in text and "(default None)" not in text
    assert "(default skipgram)" in text and "(default 2,000,000)" in text
    assert "(default auto)" in text and "(default 2000)" in text
    assert "unset: 65536 with the fused kernel" in text


def test_unknown_flags_and_choices_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        _parse(tmp_path, "--runner", "DirectRunner")
    assert "unrecognized arguments: --runner DirectRunner" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parse(tmp_path, "--kernel", "gpu")


def test_the_run_config_section_sets_every_model_flag_but_no_path():
    keys = train_job.PARAMS.config_keys()
    assert {"dim", "epochs", "negatives", "learning_rate", "batch_size", "seed", "strategy", "tpu",
            "kernel", "window", "sample", "model", "subwords", "min_n", "max_n", "buckets"} <= set(keys)
    assert not {"corpus", "output", "init_from", "max_steps"} & set(keys)
    section = train_job.PARAMS.from_mapping({"dim": 50, "kernel": "tf"}, "train")
    assert section["dim"] == 50 and section["kernel"] == "tf" and section["epochs"] == 5
    assert section["learning_rate"] is None  # the job derives it from the model
    with pytest.raises(ValueError, match="--model cbow train only with the fused CPU kernel"):
        train_job.PARAMS.from_mapping({"model": "cbow", "kernel": "tf"}, "train")
    with pytest.raises(ValueError, match="train.learning_rate must be a number > 0 or null, got 0"):
        train_job.PARAMS.from_mapping({"learning_rate": 0}, "train")
    with pytest.raises(ValueError, match="--strategy tpu needs --tpu ADDRESS"):
        train_job.PARAMS.from_mapping({"strategy": "tpu"}, "train")


def test_to_argv_gives_a_command_line_that_parses_back_to_the_same_config(tmp_path):
    values = {**train_job.PARAMS.from_mapping({"dim": 8, "batch_size": 64, "sample": 0.0}, "train"),
              "corpus": "c", "output": str(tmp_path / "o")}
    config = train_job.parse_args(train_job.PARAMS.to_argv(values))
    # An unset learning rate stays unset in the section; the job derives it from the model.
    assert values["learning_rate"] is None
    assert {k: getattr(config, k) for k in values} == {**values, "learning_rate": 0.025}


def test_an_explicit_batch_size_window_and_sample_win_over_the_defaults(tmp_path):
    corpus = skipgram.Corpus("c", ["a"], None, [], window=5, sample=1e-3, info={})
    assert _parse(tmp_path).effective(corpus, "fused") == {"window": 5, "sample": 1e-3, "batch_size": 65536}
    assert _parse(tmp_path).effective(corpus, "tf")["batch_size"] == 65536
    chosen = _parse(tmp_path, "--batch-size", "8", "--window", "2", "--sample", "0")
    assert chosen.effective(corpus, "tf") == {"window": 2, "sample": 0.0, "batch_size": 8}
