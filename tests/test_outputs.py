"""An output directory is replaced only when embedflow owns it, never over an input.

Every job publishes by replacing its output directory whole; these tests try the
paths a careless user gives and check that nothing of theirs is lost.
"""

import json
import os

import pytest

from core import outputs
from jobs import corpus as corpus_job
from schemas import artifacts as names
from tests import fixtures
from tests.gcs import gcs  # noqa: F401  pylint: disable=unused-import  (pytest fixture)
from jobs import train as train_job

JOB_FLAGS = ["--min-count", "2", "--num-shards", "2"]


def _snapshot(root):
    """{relative path: bytes} of every file under root."""
    found = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, root)] = f.read()
    return found


def test_output_holding_the_input_is_refused_and_nothing_is_touched(tmp_path):
    victim = tmp_path / "victim"
    fixtures.write(str(victim / "small.txt.gz"), fixtures.TINY_WIKI, compress=True)
    fixtures.write(str(victim / "notes.txt"), "my notes\n")
    before = _snapshot(victim)
    with pytest.raises(ValueError, match=r"--output .*victim contains the job's input .*small\.txt\.gz"):
        corpus_job.run(["--input", str(victim / "small.txt.gz"), "--output", str(victim), *JOB_FLAGS])
    # Even an earlier embedflow output may not be replaced when it holds the input.
    published = tmp_path / "published"
    with outputs.StagedOutput(str(published)) as staged:
        fixtures.write(os.path.join(staged.path, "small.txt"), fixtures.TINY_WIKI)
        staged.publish({"job": "test"})
    with pytest.raises(ValueError, match=r"--output .*published contains the job's input .*small\.txt"):
        corpus_job.run(["--input", str(published / "small.txt"), "--output", str(published), *JOB_FLAGS])
    assert os.path.exists(published / "small.txt")
    assert _snapshot(victim) == before
    assert sorted(os.listdir(tmp_path)) == ["published", "victim"]  # no staging directory left


def test_output_dot_in_a_directory_of_other_files_is_refused(tmp_path, monkeypatch):
    source = fixtures.write(str(tmp_path / "elsewhere" / "small.txt"), fixtures.TINY_WIKI)
    work = tmp_path / "somewhere"
    fixtures.write(str(work / "thesis.tex"), "chapter one\n")
    os.makedirs(work / "figures")
    monkeypatch.chdir(work)
    before = _snapshot(work)
    with pytest.raises(ValueError, match=r"--output \. already holds files that no embedflow job "
                                         r"wrote \(figures, thesis\.tex\)"):
        corpus_job.run(["--input", source, "--output", ".", *JOB_FLAGS])
    assert _snapshot(work) == before
    assert sorted(os.listdir(tmp_path)) == ["elsewhere", "somewhere"]


def test_output_inside_an_input_directory_is_refused(tmp_path):
    corpus_dir = tmp_path / "corpus"
    os.makedirs(corpus_dir)
    with pytest.raises(ValueError, match=r"--output .*corpus/embeddings lies inside the job's input"):
        train_job.parse_args(["--corpus", str(corpus_dir), "--output", str(corpus_dir / "embeddings")])


def test_train_output_that_is_its_corpus_is_refused(tmp_path):
    out = str(tmp_path / "out" / "same")
    corpus_job.run(["--input", fixtures.write(str(tmp_path / "in.txt"), fixtures.TINY_WIKI),
                "--output", out, *JOB_FLAGS])
    before = _snapshot(out)
    with pytest.raises(ValueError, match=r"--output .*same is the job's input .*same"):
        train_job.run(["--corpus", out, "--output", out, "--epochs", "1"])
    assert _snapshot(out) == before
    # The same path through a symlink is the same directory.
    os.symlink(out, tmp_path / "alias")
    with pytest.raises(ValueError, match="is the job's input"):
        train_job.parse_args(["--corpus", out, "--output", str(tmp_path / "alias")])


def test_empty_directory_and_earlier_output_are_replaced(tmp_path):
    source = fixtures.write(str(tmp_path / "in" / "a.txt"), fixtures.TINY_WIKI)
    out = tmp_path / "out"
    os.makedirs(out)
    corpus_job.run(["--input", source, "--output", str(out), *JOB_FLAGS])
    first = outputs.read_info(str(out))["completed_at"]
    assert os.path.exists(out / names.COMPLETED_FILE)
    # An earlier embedflow output, even one whose COMPLETED marker is gone, is replaced.
    os.remove(out / names.COMPLETED_FILE)
    corpus_job.run(["--input", source, "--output", str(out), *JOB_FLAGS])
    assert os.path.exists(out / names.COMPLETED_FILE)
    assert outputs.read_info(str(out))["completed_at"] >= first


def test_a_foreign_info_json_does_not_make_a_directory_embedflows(tmp_path):
    source = fixtures.write(str(tmp_path / "in" / "a.txt"), fixtures.TINY_WIKI)
    out = tmp_path / "out"
    fixtures.write(str(out / names.INFO_FILE), json.dumps({"name": "somebody else's"}))
    fixtures.write(str(out / "data.csv"), "1,2\n")
    with pytest.raises(ValueError, match=r"already holds files that no embedflow job wrote "
                                         r"\(data\.csv, info\.json\)"):
        corpus_job.run(["--input", source, "--output", str(out), *JOB_FLAGS])
    assert sorted(os.listdir(out)) == ["data.csv", "info.json"]


def test_files_appearing_in_the_output_while_the_job_runs_are_not_replaced(tmp_path):
    out = tmp_path / "out"
    with outputs.StagedOutput(str(out)) as staged:
        fixtures.write(str(out / "arrived-meanwhile.txt"), "keep me\n")
        with pytest.raises(ValueError, match="arrived-meanwhile.txt"):
            staged.publish({"job": "test"})
    assert os.listdir(out) == ["arrived-meanwhile.txt"]
    assert sorted(os.listdir(tmp_path)) == ["out"]  # the staging directory is gone


def test_gcs_prefix_with_foreign_objects_is_refused(gcs, tmp_path):  # pylint: disable=redefined-outer-name
    gcs.upload("mine/report.pdf", b"%PDF")
    with pytest.raises(ValueError, match=r"--output gs://embedflow-test/mine already holds files "
                                         r"that no embedflow job wrote \(report\.pdf\)"):
        outputs.StagedOutput(gcs.url("mine"))
    assert gcs.list("mine") == ["mine/report.pdf"]

    # An input inside the output prefix is refused, by object path.
    with pytest.raises(ValueError, match="contains the job's input"):
        outputs.check_output_dir(gcs.url("data"), inputs=[gcs.url("data/corpus/a.txt")])

    # An earlier embedflow output on gs:// is replaced whole.
    with outputs.StagedOutput(gcs.url("ours")) as staged:
        outputs.write_text(outputs.join(staged.path, "old.txt"), "old\n")
        staged.publish({"job": "test"})
    with outputs.StagedOutput(gcs.url("ours")) as staged:
        outputs.write_text(outputs.join(staged.path, "new.txt"), "new\n")
        staged.publish({"job": "test"})
    assert gcs.list("ours/") == ["ours/COMPLETED", "ours/info.json", "ours/new.txt"]
