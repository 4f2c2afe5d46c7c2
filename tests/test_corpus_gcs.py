"""Corpus job on `gs://` input, against the GCS emulator of tests/gcs.py.

Output stays local: the job's outputs are read back with TensorFlow, whose own gs://
filesystem cannot be pointed at the emulator.
"""

import os

import pytest

from core import outputs
from jobs import corpus as corpus_job
from tests import fixtures
from tests.gcs import gcs  # noqa: F401  pylint: disable=unused-import  (pytest fixture)

JOB_FLAGS = ["--min-count", "2", "--num-shards", "2"]


def test_gcs_input_gives_the_same_output_as_local_copies(gcs, tmp_path):  # pylint: disable=redefined-outer-name
    local = [fixtures.write(str(tmp_path / "in" / "a.txt"), fixtures.TINY_WIKI),
             fixtures.write(str(tmp_path / "in" / "b.txt.gz"), fixtures.TINY_WIKI, compress=True)]
    for path in local:
        gcs.upload_file(path, "corpus/" + os.path.basename(path))
    assert gcs.list("corpus/") == ["corpus/a.txt", "corpus/b.txt.gz"]
    with open(local[1], "rb") as f:
        assert gcs.download("corpus/b.txt.gz") == f.read()  # stored gzipped, as uploaded

    from_local = corpus_job.run(["--input", str(tmp_path / "in" / "*"),
                             "--output", str(tmp_path / "from-local"), *JOB_FLAGS])
    from_gcs = corpus_job.run(["--input", gcs.url("corpus/*"),
                           "--output", str(tmp_path / "from-gcs"), *JOB_FLAGS])

    vocab = fixtures.read_vocab(from_gcs)
    assert vocab == fixtures.read_vocab(from_local)
    # Two copies of the tiny corpus: every hand count doubled, so all reach --min-count 2.
    assert dict(vocab) == {t: 2 * c for t, c in fixtures.TINY_COUNTS.items()}
    assert sorted(fixtures.read_windows(from_gcs)) == sorted(fixtures.read_windows(from_local))

    gcs_info, local_info = outputs.read_info(from_gcs), outputs.read_info(from_local)
    assert gcs_info["counts"] == local_info["counts"]
    assert gcs_info["counts"]["lines_skipped_markup"] == 8  # both files read, the .gz one decompressed
    assert [(f["path"], f["size"]) for f in gcs_info["inputs"]["files"]] == [
        (gcs.url("corpus/a.txt"), os.path.getsize(local[0])),
        (gcs.url("corpus/b.txt.gz"), os.path.getsize(local[1]))]
    # Beam authenticated with the fake metadata server's token, not after ~20 s of
    # retries as an anonymous client.
    assert any("/service-accounts/default/token" in r for r in gcs.metadata_requests)


@pytest.mark.parametrize("pattern, reason", [
    ("gs://embedflow-test/corpus/nothing-*.txt", "matches no file"),
    ("gs://embedflow-test/no-such-file.txt", "matches no file"),
    ("gs://no-such-bucket/corpus/*", "cannot list it"),  # listing a missing bucket is a 404
])
def test_gcs_glob_matching_nothing_names_it(gcs, tmp_path, pattern, reason):  # pylint: disable=redefined-outer-name
    gcs.upload("corpus/a.txt", fixtures.TINY_WIKI)
    with pytest.raises(FileNotFoundError, match=f"--input {pattern.replace('*', '[*]')}:? {reason}"):
        corpus_job.run(["--input", pattern, "--output", str(tmp_path / "out"), *JOB_FLAGS])
    assert not os.listdir(tmp_path)  # failed before any work: no output, no staging directory
