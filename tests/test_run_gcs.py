"""`embedflow run`'s own bookkeeping on gs://, against the GCS emulator of tests/gcs.py.

Reuse by fingerprint (find + copy), the `latest` object and the report, all through
Beam's FileSystems. The stage jobs themselves are not run here: TensorFlow's own gs://
filesystem needs the TLS proxy the full end-to-end chain test would add.
"""

import json

from embedflow import artifacts
from embedflow import report
from embedflow import run as chain_run
from tests.gcs import gcs  # noqa: F401  pylint: disable=unused-import  (pytest fixture)


def _publish(directory, files, info):
    with artifacts.StagedOutput(directory) as out:
        for name, text in files.items():
            artifacts.write_text(artifacts.join(out.path, name), text)
        out.publish(info)


def test_reuse_latest_and_report_on_gcs(gcs):  # pylint: disable=redefined-outer-name
    root = gcs.url("root")
    first = artifacts.join(root, "runs", "20260101T000000Z-aaaaaa")
    _publish(artifacts.join(first, "corpus"), {"vocab.tsv": "the\t3\n", "windows/w-0.tfrecord": "x"},
             {"job": "corpus", "vocab_size": 1})
    artifacts.write_text(artifacts.join(first, "corpus" + chain_run.STAGE_RECORD_SUFFIX),
                         json.dumps({"stage": "corpus", "fingerprint": "f" * 64, "status": "ran"}))

    new = chain_run.Run(root, chain_run.load_config(), name="20260102T000000Z-bbbbbb")
    assert new.find_reusable("corpus", "0" * 64) is None
    source_run, source = new.find_reusable("corpus", "f" * 64)
    assert source_run == "20260101T000000Z-aaaaaa"
    chain_run.copy_stage(source, new.stage_dir("corpus"))
    copied = sorted(n for n in gcs.list("root/runs/20260102T000000Z-bbbbbb/"))
    assert copied == [f"root/runs/20260102T000000Z-bbbbbb/corpus/{n}"
                      for n in ("COMPLETED", "info.json", "vocab.tsv", "windows/w-0.tfrecord")]
    assert artifacts.read_info(new.stage_dir("corpus"))["vocab_size"] == 1
    assert not [n for n in gcs.list("root/") if ".partial-" in n]  # staging gone

    assert chain_run.read_latest(root) is None
    chain_run.write_latest(root, new.name)
    assert chain_run.read_latest(root) == new.name and gcs.download("root/latest") == new.name.encode() + b"\n"

    artifacts.write_text(artifacts.join(new.dir, "evaluation", "pca.json"), json.dumps(
        {"words": ["a", "b", "c"], "xy": [[0, 1], [1, 0], [0.5, 0.5]], "explained_variance": [0.6, 0.3]}))
    report.write_report(new.dir, {"run": new.name, "stages": {}, "metrics": {"digit_accuracy": 0.9},
                                  "gates": [], "promotion": {"passed": True, "promoted": True},
                                  "config": {}, "latest_metrics": None})
    assert "digit_accuracy" in gcs.download(f"root/runs/{new.name}/report.md").decode()
    assert gcs.download(f"root/runs/{new.name}/report/pca.png")[:4] == b"\x89PNG"
