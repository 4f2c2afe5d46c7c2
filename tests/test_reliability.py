"""Damaged inputs fail naming the file; interrupted and killed jobs leave nothing behind."""

import bz2
import gzip
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from core import files, outputs
from embedflow import cli
from jobs import corpus as corpus_job
from schemas import artifacts as names
from tests import fixtures

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOB_FLAGS = ["--min-count", "1", "--num-shards", "2"]
TEXT = ("the cat sat on the mat and the dog ran after it " * 12 + "\n") * 400


def _damaged(tmp_path, kind, how):
    """A compressed copy of TEXT, cut to a third or with zeros written into its middle."""
    data = gzip.compress(TEXT.encode()) if kind == "gz" else bz2.compress(TEXT.encode())
    if how == "truncated":
        data = data[: len(data) // 3]
    else:
        middle = len(data) // 2
        data = data[:middle] + b"\0" * 64 + data[middle + 64:]
    path = tmp_path / f"in.txt.{kind}"
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("kind, how", [("gz", "truncated"), ("gz", "corrupt"), ("bz2", "truncated")])
def test_damaged_compressed_corpus_fails_naming_the_file_and_publishes_nothing(tmp_path, capsys, kind, how):
    path = _damaged(tmp_path, kind, how)
    out = tmp_path / "out"
    argv = ["--input", path, "--output", str(out), *JOB_FLAGS]
    assert cli.run_job("corpus", corpus_job.run, argv) == 2
    err = capsys.readouterr().err
    assert f"embedflow corpus: error: {path}: the " in err and "truncated or corrupt" in err
    assert "Traceback" not in err
    assert not out.exists()
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(path)]  # no staging directory left


def test_a_gzip_recognised_by_content_fails_when_truncated(tmp_path):
    """The digits and sentiment readers open inputs this way (gzip by magic, any name)."""
    path = _damaged(tmp_path, "gz", "truncated")
    renamed = str(tmp_path / "digits.tra")
    os.rename(path, renamed)
    with files.open_binary(renamed) as f:
        with pytest.raises(files.CorruptInput, match=r"digits\.tra: the gzip data is truncated"):
            f.read()
    intact = tmp_path / "ok.bin"
    intact.write_bytes(gzip.compress(b"fine\n"))
    with files.open_binary(str(intact)) as f:
        assert f.read() == b"fine\n"


@pytest.mark.parametrize("sig, status, line", [
    (signal.SIGINT, 130, r"embedflow corpus: interrupted; nothing was published"),
    (signal.SIGTERM, 143, r"embedflow corpus: stopped by SIGTERM( \[while running '[^']+'\])?; nothing was published"),
])
def test_ctrl_c_or_sigterm_during_the_corpus_job_exits_with_one_line(tmp_path, sig, status, line):
    big = fixtures.write(str(tmp_path / "big.txt"), TEXT * 400)  # ~20 MB: seconds of work
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "jobs.corpus", "--input", big, "--output", str(out),
                             *JOB_FLAGS], cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO),
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    staging = None
    while time.time() < deadline and staging is None:  # interrupt once the pipeline writes
        staging = next((n for n in os.listdir(tmp_path) if ".partial-" in n), None)
        time.sleep(0.2)
    assert staging, "the job never started its output"
    time.sleep(3)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == status, err[-2000:]
    assert re.search(line, err), err[-2000:]
    assert "Traceback" not in err
    assert not out.exists() and not any(".partial-" in n for n in os.listdir(tmp_path))


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_later_run_removes_the_staging_directories_of_killed_runs_only(tmp_path):
    final = str(tmp_path / "out")
    killed = f"{final}.partial-killed"
    running = f"{final}.partial-running"
    elsewhere = f"{final}.partial-otherhost"
    for path, owner in ((killed, outputs.process_identity(_dead_pid())),
                        (running, outputs.process_identity()),
                        (elsewhere, {"host": "another-host", "pid": 1, "started": 1})):
        fixtures.write(os.path.join(path, "part-0"), "half\n")
        fixtures.write(os.path.join(path, names.STAGING_OWNER_FILE), json.dumps(owner))
    # A staging directory without an owner file (an older embedflow) is not ours to judge.
    fixtures.write(f"{final}.partial-unknown/part-0", "?\n")
    with outputs.StagedOutput(final) as staged:
        outputs.write_text(outputs.join(staged.path, "a.txt"), "a\n")
        staged.publish({"job": "test"})
    left = sorted(n for n in os.listdir(tmp_path) if ".partial-" in n)
    assert left == ["out.partial-otherhost", "out.partial-running", "out.partial-unknown"]
    assert sorted(os.listdir(final)) == ["COMPLETED", "a.txt", "info.json"]  # no owner file published


def test_a_process_whose_pid_was_reused_is_not_the_owner():
    me = outputs.process_identity()
    assert not outputs.is_stale(me)
    assert outputs.is_stale({**me, "started": (me["started"] or 0) + 1}) == (me["started"] is not None)
    assert outputs.is_stale({**me, "pid": _dead_pid()})


def test_an_unquoted_layer_string_in_a_run_config_is_not_read_as_a_date(tmp_path):
    from embedflow import config as run_config  # pylint: disable=import-outside-toplevel

    path = tmp_path / "run.yaml"
    path.write_text("digits:\n  layers: 1024-32-10\n")
    assert run_config.load_config(str(path))["digits"]["layers"] == "1024-32-10"
    assert run_config.load_config(None, ["digits.layers=1024-64-10"])["digits"]["layers"] == "1024-64-10"
