"""The trainer at scale: the tf kernel's factored, capped update against numpy, compiled
with XLA on the CPU, stable where a plain sum diverges; what its replicas exchange (bytes
that do not grow with the vocabulary); fused-kernel workers adding up their changes
(frequent rows more often) and agreeing to stop when one diverges."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from core import outputs
from jobs import corpus as corpus_job
from jobs import train as train_job
from tests import fixtures
from tests.test_trainer import (  # noqa: F401
    MIRRORED_SCRIPT,
    REPO,
    _topic_precision,
    run_two_workers,
    topic_corpus,
)
from trainer import exchange, skipgram
from trainer.vectors import WordVectors

V, D, WINDOW, NEGATIVES, NOISE = 7, 4, 2, 2, 3


def _batch():
    """Two runs (ids 0-3 and 4-6) and a padding token, with their radii and noise words."""
    rng = np.random.default_rng(3)
    return {"ids": np.array([0, 1, 2, 1, 3, 4, 5, 0], np.int64),
            "rows": np.array([0, 0, 0, 0, 1, 1, 1, -1], np.int64),
            "radius": np.array([1, 2, 2, 1, 2, 1, 2, 2], np.int32),
            "negatives": rng.integers(0, V, (8, NOISE)).astype(np.int64), "words": np.float32(8)}


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _reference(w_in, w_out, batch, lr, cap):
    """The tf kernel's update in numpy, pair by pair: sums of word2vec's gradients, each
    row moved by min(lr, cap / H) times its sum, H its curvature (sigmoid' |partner|^2)."""
    ids, rows, radius, negs = batch["ids"], batch["rows"], batch["radius"], batch["negatives"]
    grads = [np.zeros_like(w_in), np.zeros_like(w_out)]
    curvature = [np.zeros(V), np.zeros(V)]

    def term(centre, target, g, s_prime):  # centre's input row against target's output row
        v, c = w_in[centre], w_out[target]
        grads[0][centre] += g * c
        grads[1][target] += g * v
        curvature[0][centre] += s_prime * c @ c
        curvature[1][target] += s_prime * v @ v

    for i in range(len(ids)):
        contexts = [j for j in range(len(ids)) if j != i and rows[i] >= 0 and rows[j] == rows[i]
                    and abs(j - i) <= radius[i]]
        for j in contexts:
            s = _sigmoid(w_in[ids[i]] @ w_out[ids[j]])
            term(ids[i], ids[j], s - 1, s * (1 - s))
        weight = len(contexts) * NEGATIVES / NOISE
        for k in negs[i]:
            s = _sigmoid(w_in[ids[i]] @ w_out[k])
            term(ids[i], k, s * weight, weight * s * (1 - s))
    step = [np.minimum(lr, cap / np.maximum(h, 1e-30))[:, None] for h in curvature]
    return w_in - step[0] * grads[0], w_out - step[1] * grads[1]


def _state(cap):
    config = skipgram.TrainConfig(corpus="c", output="o", dim=D, negatives=NEGATIVES, noise_per_centre=NOISE,
                                  newton_cap=cap)
    state = skipgram.TrainState(V, D, seed=5)
    rng = np.random.default_rng(5)
    state.model.inputs.assign(rng.normal(0, 0.5, (V, D)).astype(np.float32))
    state.model.outputs.assign(rng.normal(0, 0.5, (V, D)).astype(np.float32))
    return config, state


def _run(state, config, batch, lr, chunk, jit):
    updates = skipgram.compiled_updates(state, config, WINDOW, chunk, jit=jit)
    args = (state.model.inputs.handle, state.model.outputs.handle,
            {k: tf.constant(v) for k, v in batch.items()}, tf.constant(lr, tf.float32))
    loss, pairs = updates(*args)
    return updates, args, float(loss), float(pairs)


@pytest.mark.parametrize("cap, lr", [(1e9, 0.1), (1.0, 50.0)])
def test_one_compiled_update_is_the_capped_sum_of_word2vecs_gradients(cap, lr):
    batch = _batch()
    config, state = _state(cap)
    w_in, w_out = state.model.inputs.numpy(), state.model.outputs.numpy()
    expected_in, expected_out = _reference(w_in, w_out, batch, lr, cap)
    _, _, _, pairs = _run(state, config, batch, lr, chunk=8, jit=True)
    assert pairs == 14  # radii 1, 2, 2, 1 in the first run: 1 + 3 + 3 + 1; 2, 1, 2 in the second: 2 + 2 + 2
    np.testing.assert_allclose(state.model.inputs.numpy(), expected_in, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(state.model.outputs.numpy(), expected_out, rtol=1e-4, atol=1e-5)
    if cap == 1.0:  # the cap binds: a plain sum at this rate moves rows far further
        plain_in, _ = _reference(w_in, w_out, batch, lr, 1e9)
        assert np.abs(plain_in - w_in).max() > 5 * np.abs(expected_in - w_in).max()


def test_the_step_compiles_with_xla_and_runs_its_updates_one_after_another():
    batch = _batch()
    config, state = _state(1e9)
    w_in, w_out = state.model.inputs.numpy(), state.model.outputs.numpy()
    updates, args, _, _ = _run(state, config, batch, 0.1, chunk=4, jit=True)
    hlo = updates.experimental_get_compiler_ir(*args)(stage="hlo")
    assert "while" in hlo and "scatter" in hlo  # one XLA program: the loop of updates and its scatters
    # Two updates of 4 centres, the second reading what the first wrote; the pairs that
    # cross between them are not formed (as between steps).
    first = {k: (v[:4] if k != "words" else v) for k, v in batch.items()}
    second = {k: (v[4:] if k != "words" else v) for k, v in batch.items()}
    mid_in, mid_out = _reference(w_in, w_out, first, 0.1, 1e9)
    expected_in, expected_out = _reference(mid_in, mid_out, second, 0.1, 1e9)
    np.testing.assert_allclose(state.model.inputs.numpy(), expected_in, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(state.model.outputs.numpy(), expected_out, rtol=1e-4, atol=1e-5)
    # The same program without XLA gives the same vectors.
    config, again = _state(1e9)
    _run(again, config, batch, 0.1, chunk=4, jit=False)
    np.testing.assert_allclose(again.model.inputs.numpy(), state.model.inputs.numpy(), rtol=1e-5, atol=1e-6)


def test_a_whole_epoch_in_one_update_stays_stable_where_the_plain_sum_diverges(tmp_path, topic_corpus):  # noqa: F811
    argv = ["--corpus", topic_corpus, "--dim", "32", "--epochs", "30", "--kernel", "tf",
            "--batch-size", "65536", "--update-tokens", "65536", "--checkpoint-every-steps", "1000"]
    with pytest.raises(ValueError, match="training diverged"):
        train_job.run(argv + ["--output", str(tmp_path / "plain"), "--newton-cap", "1e30"])
    out = train_job.run(argv + ["--output", str(tmp_path / "capped")])
    info = outputs.read_info(out)["training"]
    assert info["steps"] == 30 and info["batch_size"] == 65536  # one 64k-token update a step
    assert _topic_precision(WordVectors.load(out)) >= 0.9


@pytest.fixture(scope="module")
def wide_corpus(tmp_path_factory):
    """The topic corpus plus 3,000 words seen once: a vocabulary 100 times larger."""
    root = tmp_path_factory.mktemp("wide")
    rare = "\n".join(" ".join(f"rare{i}x{j}" for j in range(30)) for i in range(100))
    text = fixtures.write(str(root / "in" / "wide.txt"), fixtures.topic_corpus() + rare + "\n")
    out = str(root / "corpus")
    corpus_job.run(["--input", text, "--output", out, "--min-count", "1", "--num-shards", "2"])
    return out


def _mirrored(corpus_dir, out, *extra):
    subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT, "--corpus", corpus_dir, "--output", out,
                    "--strategy", "mirrored", "--dim", "32", "--batch-size", "512", *extra],
                   cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), check=True, capture_output=True)
    return outputs.read_info(out)


def test_replicas_exchange_the_same_bytes_a_step_whatever_the_vocabulary(tmp_path, topic_corpus, wide_corpus):  # noqa: F811
    small = _mirrored(topic_corpus, str(tmp_path / "small"), "--max-steps", "3")
    wide = _mirrored(wide_corpus, str(tmp_path / "wide"), "--max-steps", "3")
    assert wide["vocab_size"] > 100 * small["vocab_size"]
    per_step = [info["training"]["bytes_exchanged"] / info["training"]["steps"] for info in (small, wide)]
    # 256 centres a replica: ids, 30 noise ids (6 x --negatives), contexts, 32 gradient floats,
    # curvature, 10 context (window 5) and 30 noise coefficients, 4 bytes each; the loss and
    # pairs; the words.
    assert per_step[0] == per_step[1] == 2 * (256 * (1 + 30 + 1 + 32 + 1 + 10 + 30) * 4 + 8 + 4)
    # Two dense tables a replica, as before, were already more at 3,000 words.
    assert per_step[1] < 2 * exchange.dense_table_bytes(wide["vocab_size"], 32)
    assert wide["training"]["replica_max_difference"] == 0.0


def test_fused_workers_that_diverge_stop_together_and_publish_nothing(tmp_path, topic_corpus):  # noqa: F811
    out = str(tmp_path / "emb")
    codes, logs, _ = run_two_workers("--corpus", topic_corpus, "--output", out, "--dim", "16", "--epochs", "2",
                                     "--batch-size", "512", "--learning-rate", "1e30", "--kernel", "fused",
                                     timeout=240)
    assert codes == [2, 2], logs[0][-2000:] + logs[1][-2000:]
    assert all("training diverged" in log and "--learning-rate 1e+30 is too high" in log for log in logs)
    assert not os.path.exists(out)


# Two workers' TableSync on tables of 4 rows, the 2 first "hot": each changes its own row,
# both change rows 2 and 3; a hot exchange, then a full one.
SYNC_SCRIPT = """
import json
import numpy as np
import tensorflow as tf
from trainer import exchange
exchange.HOT_ROWS = 2
strategy = tf.distribute.MultiWorkerMirroredStrategy()
index = strategy.cluster_resolver.task_id
tables = [tf.Variable(np.zeros([4, 3], np.float32)), tf.Variable(np.ones([4, 3], np.float32))]
words = tf.Variable(0.0, dtype=tf.float64)
sync = exchange.TableSync(strategy, tables, words, 2, strategy.extended.worker_devices[0])
change = np.zeros([4, 3], np.float32)
change[index], change[2], change[3] = index + 1, 1 + 2 * index, 10 * (index + 1)
for table in tables:
    table.assign_add(change)
sync.count(100.0 * (index + 1))
sync.exchange_hot()
hot = tables[0].numpy()[:, 0].tolist()
agreed = sync.exchange(finished=index, stop=0, max_steps=0, diverged=0, chief_step=7 if index == 0 else 0)
print("RESULT " + json.dumps({"hot": hot, "full": [t.numpy()[:, 0].tolist() for t in tables], "agreed": agreed,
                              "words": float(words.numpy()), "bytes": sync.bytes_exchanged(),
                              "touched": sync.touched_rows, "touched_bytes": sync.touched_bytes()}))
"""


def test_fused_workers_add_up_their_changes_frequent_rows_more_often():
    codes, logs, outs = run_two_workers(script=SYNC_SCRIPT, timeout=120)
    assert codes == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    results = [json.loads(out.split("RESULT ", 1)[1]) for out in outs]
    # After the hot exchange: rows 0 and 1 hold both workers' changes (each changed one:
    # it is kept whole, not halved); rows 2 and 3 are still each worker's own.
    assert [r["hot"] for r in results] == [[1, 2, 1, 10], [1, 2, 3, 20]]
    for r in results:  # after the full exchange every row holds the sum of the changes, on both
        assert r["full"] == [[1, 2, 4, 30], [2, 3, 5, 31]]
        assert r["agreed"]["finished"] == 1 and r["agreed"]["chief_step"] == 7 and r["agreed"]["stop"] == 0
        assert r["agreed"]["words"] == 300 and r["words"] == 300  # the schedule follows both workers
        # float16 changes: a hot exchange of 2 rows, a full one of 4 and the agreed values.
        assert r["bytes"] == 2 * (2 * 2 * 3 * 2) + 2 * (2 * 4 * 3 * 2 + 7 * 8)
        # Changed since the hot exchange: rows 2 and 3 of both tables, on each worker (rows 0
        # and 1 were just exchanged). Sending only those, each with its id, would cost this:
        assert r["agreed"]["rows_changed"] == 8 and r["touched"] == 8
        assert r["touched_bytes"] == 8 * (4 + 3 * 2) + 2 * 7 * 8 + 2 * (2 * 2 * 3 * 2)
