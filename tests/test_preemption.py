"""SIGTERM (preemption on Vertex AI or Kubernetes): the trainer checkpoints, exits 143
within the grace period, and the same command resumes; one process and two workers."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from core import outputs
from tests.test_trainer import _free_port, _topic_precision, topic_corpus  # noqa: F401 (fixture)
from trainer.vectors import WordVectors

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRACE = 30  # seconds a preempted worker gets before SIGKILL (Kubernetes' default)


def _argv(corpus_dir, out, *extra):
    return [sys.executable, "-m", "jobs.train", "--corpus", corpus_dir, "--output", out, "--dim", "32",
            "--epochs", "60", "--batch-size", "256", "--checkpoint-every-steps", "1000", *extra]


def _wait_for_steps(ckpt_dir, procs, log_paths, timeout=180):
    """Waits until training has run a while (its TensorBoard logs exist and time passed)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert all(p.poll() is None for p in procs), [open(p).read()[-2000:] for p in log_paths]
        if os.path.isdir(os.path.join(ckpt_dir, "logs")):
            time.sleep(2)  # inside the training
            return
        time.sleep(0.2)
    raise AssertionError("training never started")


def _terminate(procs):
    started = time.time()
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        p.wait(timeout=GRACE + 30)
    return time.time() - started


def test_sigterm_checkpoints_and_exits_143_then_the_same_command_resumes(tmp_path, topic_corpus):  # noqa: F811
    out = str(tmp_path / "emb")
    ckpt_dir = out + ".checkpoints"
    argv = _argv(topic_corpus, out)
    log_path = str(tmp_path / "first.log")
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(argv, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO),
                                stdout=subprocess.DEVNULL, stderr=log)
        _wait_for_steps(ckpt_dir, [proc], [log_path])
        seconds = _terminate([proc])
    text = open(log_path, encoding="utf-8").read()
    assert proc.returncode == 143, text[-3000:]
    assert seconds < GRACE, seconds
    assert "stopped by SIGTERM at step" in text and "Traceback" not in text
    stopped_at = int(text.split("stopped by SIGTERM at step ")[1].split(";")[0])
    # The checkpoint is of the step it stopped at, not of an earlier epoch end.
    assert int(tf.train.latest_checkpoint(ckpt_dir).split("-")[-1]) == stopped_at > 0
    assert not os.path.exists(out)

    done = subprocess.run(argv[:-6] + ["--epochs", "3"] + argv[-4:], cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True)
    assert done.returncode != 0 and "--epochs" in done.stderr  # other parameters: refused, named
    log = subprocess.run(argv, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), capture_output=True,
                         text=True, check=True).stderr
    assert f"resumed from {ckpt_dir}/ckpt-{stopped_at}" in log
    assert outputs.read_info(out)["training"]["words"] < 60 * 18000  # only what was left
    assert _topic_precision(WordVectors.load(out)) >= 0.9


@pytest.mark.parametrize("kernel", ["fused", "tf"])
def test_sigterm_stops_two_workers_together_and_they_resume(tmp_path, topic_corpus, kernel):  # noqa: F811
    """Fused: each worker's own tables, exchanged every round; tf: replicas that exchange
    every update. Either way they stop at the same step, and resume."""
    out = str(tmp_path / "emb")
    argv = _argv(topic_corpus, out, "--strategy", "multiworker", "--kernel", kernel)

    def start(tag):
        procs, logs = [], []
        workers = [f"localhost:{_free_port()}", f"localhost:{_free_port()}"]  # not the last run's
        for index in range(2):
            env = dict(os.environ, PYTHONPATH=REPO, TF_CONFIG=json.dumps(
                {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}))
            logs.append(str(tmp_path / f"{tag}-{index}.log"))
            with open(logs[-1], "w", encoding="utf-8") as log:
                procs.append(subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log))
        return procs, logs

    procs, logs = start("first")
    try:
        _wait_for_steps(out + ".checkpoints", procs, logs)
        seconds = _terminate(procs)
    finally:
        for p in procs:
            p.kill()
    texts = [open(p, encoding="utf-8").read() for p in logs]
    assert [p.returncode for p in procs] == [143, 143], texts[0][-2000:] + texts[1][-2000:]
    assert seconds < GRACE, seconds
    assert all("stopped by SIGTERM at step" in t for t in texts)
    steps = {int(t.split("stopped by SIGTERM at step ")[1].split(";")[0]) for t in texts}
    assert len(steps) == 1  # both stopped after the same step
    stopped_at = steps.pop()
    assert int(tf.train.latest_checkpoint(out + ".checkpoints").split("-")[-1]) == stopped_at

    procs, logs = start("second")
    try:
        codes = [p.wait(timeout=600) for p in procs]
    finally:
        for p in procs:
            p.kill()
    texts = [open(p, encoding="utf-8").read() for p in logs]
    assert codes == [0, 0], texts[0][-2000:] + texts[1][-2000:]
    assert f"ckpt-{stopped_at}" in texts[0]
    training = outputs.read_info(out)["training"]
    assert training["kernel"] == kernel
    assert training["words"] < 60 * 18000  # only what was left
    assert f"tables sha256 {training['tables_sha256']}" in texts[1]  # the workers end equal
    assert _topic_precision(WordVectors.load(out)) >= 0.9
