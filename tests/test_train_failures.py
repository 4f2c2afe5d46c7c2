"""The trainer refuses, with one clear error and nothing published: a diverged run, the
checkpoints of another run, and window shards that are not what the corpus job wrote."""

import json
import logging
import os
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf

from core.main import run_job
from jobs import corpus as corpus_job
from jobs import train as train_job
from schemas import corpus as corpus_schema
from tests import fixtures
from tests.test_trainer import topic_corpus  # noqa: F401  pylint: disable=unused-import  (fixture)
from trainer import skipgram

SMALL = ["--dim", "8", "--epochs", "1", "--batch-size", "256"]


def _leftovers(tmp_path, out):
    """What a failed run left beside `out`, but for its checkpoints."""
    return sorted(n for n in os.listdir(tmp_path) if n.startswith(os.path.basename(out))
                  and not n.endswith(".checkpoints"))


# ------------------------------------------------------------------- divergence


# The tf kernel's --newton-cap keeps even --learning-rate 1e30 stable (each row moves at most
# a Newton step); lifted, the plain sums diverge.
UNCAPPED = ["--newton-cap", "1e30"]


@pytest.mark.parametrize("kernel, rate, epochs, extra", [("tf", "10", "5", UNCAPPED), ("tf", "1e30", "1", UNCAPPED),
                                                         ("fused", "1e30", "1", [])])
def test_a_diverging_run_names_the_learning_rate_and_publishes_nothing(tmp_path, topic_corpus, capsys,  # noqa: F811
                                                                       kernel, rate, epochs, extra):
    out = str(tmp_path / "emb")
    argv = ["--corpus", topic_corpus, "--output", out, "--kernel", kernel, "--learning-rate", rate,
            "--dim", "16", "--epochs", epochs, "--checkpoint-every-steps", "5", *extra]
    assert run_job("train", train_job.run, argv) == 2  # a user error, not a success
    message = capsys.readouterr().err
    assert "training diverged" in message
    assert f"--learning-rate {float(rate):g} is too high" in message
    assert f"such as --learning-rate {float(rate) / 10:g}" in message
    assert f"after deleting {out}.checkpoints" in message
    assert _leftovers(tmp_path, out) == []  # no output, no staging directory, so no COMPLETED


def test_no_checkpoint_holds_the_non_finite_vectors(tmp_path, topic_corpus):  # noqa: F811
    out = str(tmp_path / "emb")
    with pytest.raises(ValueError, match="training diverged"):
        train_job.run(["--corpus", topic_corpus, "--output", out, "--kernel", "tf", "--learning-rate", "1e30",
                       *SMALL, *UNCAPPED, "--checkpoint-every-steps", "1"])
    checked = []
    for path in tf.train.get_checkpoint_state(out + ".checkpoints").all_model_checkpoint_paths:
        reader = tf.train.load_checkpoint(path)
        for name, _ in tf.train.list_variables(path):
            if name.startswith("model/"):
                assert np.isfinite(reader.get_tensor(name)).all(), (path, name)
                checked.append(name)
    assert len(checked) >= 2  # the first step's checkpoint was saved, finite; the next was refused


# ------------------------------------------------------------------ checkpoints


@pytest.fixture(scope="module")
def other_corpus(tmp_path_factory):
    """Another text over the same words: a corpus with a vocabulary of the same size."""
    root = tmp_path_factory.mktemp("other")
    text = fixtures.write(str(root / "in" / "other.txt"), fixtures.topic_corpus(seed=1))
    out = str(root / "corpus")
    corpus_job.run(["--input", text, "--output", out, "--min-count", "1", "--num-shards", "2"])
    return out


def _leave_checkpoints(corpus_dir, out, steps=2, **changes):
    """Trains `steps` steps without publishing, as a killed run would leave them."""
    values = {"corpus": corpus_dir, "output": out, "dim": 8, "epochs": 1, "batch_size": 256,
              "checkpoint_every_steps": 1, "max_steps": steps, "kernel": "tf", **changes}
    return skipgram.train(skipgram.TrainConfig(**values))[1]


def test_checkpoints_of_another_corpus_are_refused(tmp_path, topic_corpus, other_corpus):  # noqa: F811
    assert len(fixtures.read_vocab(other_corpus)) == len(fixtures.read_vocab(topic_corpus))
    out = str(tmp_path / "emb")
    _leave_checkpoints(topic_corpus, out)
    with pytest.raises(ValueError) as caught:
        train_job.run(["--corpus", other_corpus, "--output", out, "--kernel", "tf", *SMALL])
    message = str(caught.value)
    assert f"{out}.checkpoints holds the checkpoints of another training run" in message
    assert f"--corpus: they were trained on {topic_corpus} " in message
    assert f"this run reads {other_corpus} " in message
    assert f"Delete {out}.checkpoints to train from the start" in message
    assert not os.path.exists(out)
    assert os.path.exists(os.path.join(out + ".checkpoints", "checkpoint"))  # left for the user to judge


@pytest.mark.parametrize("flag, value, difference", [
    ("--dim", "16", "--dim: theirs is 8, this run's 16"),
    ("--seed", "2", "--seed: theirs is 1, this run's 2"),
    ("--batch-size", "128", "--batch-size: theirs is 256, this run's 128"),
])
def test_checkpoints_of_other_parameters_are_refused(tmp_path, topic_corpus, flag, value, difference):  # noqa: F811
    out = str(tmp_path / "emb")
    _leave_checkpoints(topic_corpus, out)
    argv = ["--corpus", topic_corpus, "--output", out, "--kernel", "tf", *SMALL, flag, value]
    with pytest.raises(ValueError, match="holds the checkpoints of another training run") as caught:
        train_job.run(argv)
    assert difference in str(caught.value) and "--corpus:" not in str(caught.value)


def test_the_same_run_resumes_and_one_without_a_fingerprint_is_refused(tmp_path, topic_corpus, caplog):  # noqa: F811
    out = str(tmp_path / "emb")
    _leave_checkpoints(topic_corpus, out, steps=2)
    recorded = json.loads((tmp_path / "emb.checkpoints" / skipgram.FINGERPRINT_FILE).read_text())
    assert recorded["parameters"]["dim"] == 8 and recorded["corpus"]["vocab_size"] == 27
    with caplog.at_level(logging.INFO):
        stats = _leave_checkpoints(topic_corpus, out, steps=5)
    assert f"resumed from {out}.checkpoints/ckpt-2 (epoch 0, step 2)" in caplog.text
    assert stats["steps"] == 3  # only the steps the first run had not trained
    os.remove(tmp_path / "emb.checkpoints" / skipgram.FINGERPRINT_FILE)
    with pytest.raises(ValueError, match=f"holds checkpoints without {skipgram.FINGERPRINT_FILE}"):
        _leave_checkpoints(topic_corpus, out, steps=6)


# ----------------------------------------------------------------- window shards


def _damaged_copy(tmp_path, corpus_dir, damage, legacy=False):
    """A copy of the corpus whose second window shard `damage(path)` changed."""
    copy = str(tmp_path / "corpus")
    shutil.copytree(corpus_dir, copy)
    shard = sorted((tmp_path / "corpus" / corpus_schema.WINDOWS_DIR).iterdir())[1]
    if legacy:  # written before the corpus job recorded shard sizes
        info_path = tmp_path / "corpus" / "info.json"
        info = json.loads(info_path.read_text())
        del info["windows"]["shard_bytes"]
        info_path.write_text(json.dumps(info))
    damage(shard)
    return copy, str(shard)


def _cut(shard, keep):
    data = shard.read_bytes()
    shard.write_bytes(data[:keep(len(data))])


def _flip(shard):
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, legacy, why", [
    (lambda s: _cut(s, lambda n: n // 2), False, r"holds \d+ bytes, but the corpus job wrote \d+: it is truncated"),
    (lambda s: _cut(s, lambda n: n - 10), True, r"is damaged \(truncated record at \d+\)"),
    (_flip, False, r"is damaged \(corrupted record at \d+\)"),
    (os.remove, False, "missing: windows-00001-of-00002.tfrecord; not written by it: none"),
])
def test_a_damaged_window_shard_is_named_with_the_fix(tmp_path, topic_corpus, damage, legacy, why):  # noqa: F811
    corpus_dir, shard = _damaged_copy(tmp_path, topic_corpus, damage, legacy)
    out = str(tmp_path / "emb")
    with pytest.raises(ValueError) as caught:
        train_job.run(["--corpus", corpus_dir, "--output", out, "--kernel", "tf", *SMALL])
    message = str(caught.value)
    assert message.startswith(f"--corpus {corpus_dir}: ")
    assert shard in message or os.path.basename(shard) in message
    assert re.search(why, message), message
    assert message.endswith(f"Re-run the corpus job (`{corpus_schema.PRODUCER}`) into it to write it again.")
    assert _leftovers(tmp_path, out) == []

