"""`embedflow run` on gs://, against the GCS emulator of tests/gcs.py.

First its own bookkeeping (reuse by fingerprint, the `latest` object, the report)
through Beam's FileSystems; then the whole chain with every path on gs://, TensorFlow's
own gs:// filesystem reaching the emulator through the TLS proxy of tests/gcs_tls.py
(about 2 minutes: the emulator serves one request at a time).
"""

import json

from core import outputs
from embedflow import report
from embedflow import config as run_config
from embedflow import promotion
from embedflow import lineage
from embedflow import run as chain_run
from tests.gcs import gcs  # noqa: F401  pylint: disable=unused-import  (pytest fixture)


def _publish(directory, files, info):
    with outputs.StagedOutput(directory) as out:
        for name, text in files.items():
            outputs.write_text(outputs.join(out.path, name), text)
        out.publish(info)


def test_reuse_latest_and_report_on_gcs(gcs):  # pylint: disable=redefined-outer-name
    root = gcs.url("root")
    first = outputs.join(root, "runs", "20260101T000000Z-aaaaaa")
    _publish(outputs.join(first, "corpus"), {"vocab.tsv": "the\t3\n", "windows/w-0.tfrecord": "x"},
             {"job": "corpus", "vocab_size": 1})
    outputs.write_text(outputs.join(first, "corpus" + chain_run.STAGE_RECORD_SUFFIX),
                         json.dumps({"stage": "corpus", "fingerprint": "f" * 64, "status": "ran"}))

    new = chain_run.Run(root, run_config.load_config(), name="20260102T000000Z-bbbbbb")
    assert new.find_reusable("corpus", "0" * 64) is None
    source_run, source = new.find_reusable("corpus", "f" * 64)
    assert source_run == "20260101T000000Z-aaaaaa"
    lineage.copy_stage(source, new.stage_dir("corpus"))
    copied = sorted(n for n in gcs.list("root/runs/20260102T000000Z-bbbbbb/"))
    assert copied == [f"root/runs/20260102T000000Z-bbbbbb/corpus/{n}"
                      for n in ("COMPLETED", "info.json", "vocab.tsv", "windows/w-0.tfrecord")]
    assert outputs.read_info(new.stage_dir("corpus"))["vocab_size"] == 1
    assert not [n for n in gcs.list("root/") if ".partial-" in n]  # staging gone

    assert promotion.read_latest(root) is None
    promotion.write_latest(root, new.name)
    assert promotion.read_latest(root) == new.name and gcs.download("root/latest") == new.name.encode() + b"\n"

    outputs.write_text(outputs.join(new.dir, "evaluation", "pca.json"), json.dumps(
        {"words": ["a", "b", "c"], "xy": [[0, 1], [1, 0], [0.5, 0.5]], "explained_variance": [0.6, 0.3]}))
    report.write_report(new.dir, {"run": new.name, "stages": {}, "metrics": {"digit_accuracy": 0.9},
                                  "gates": [], "promotion": {"passed": True, "promoted": True},
                                  "config": {}, "latest_metrics": None})
    assert "digit_accuracy" in gcs.download(f"root/runs/{new.name}/report.md").decode()
    assert gcs.download(f"root/runs/{new.name}/report/pca.png")[:4] == b"\x89PNG"


def test_whole_chain_with_every_path_on_gcs(gcs, tmp_path, monkeypatch):  # pylint: disable=redefined-outer-name
    """`embedflow run` with inputs, config and output root on gs:// (DirectRunner, local trainer).

    Runs in a subprocess: TensorFlow reads the proxy settings when it first touches gs://.
    """
    import os
    import subprocess
    import sys

    import yaml

    from tests.gcs_tls import tls_proxy
    from tests.test_run import _tiny_config

    config = yaml.safe_load(open(_tiny_config(tmp_path), encoding="utf-8"))
    inputs = config["inputs"]

    def upload(path):
        if os.path.isdir(path):  # a glob: object stores have no folders to name
            for name in sorted(os.listdir(path)):
                gcs.upload_file(os.path.join(path, name), "in/" + os.path.basename(path) + "/" + name)
            return gcs.url("in/" + os.path.basename(path) + "/*")
        return gcs.upload_file(path, "in/" + os.path.basename(path))

    for key in ("corpus", "similarity", "digits", "sentiment"):
        inputs[key] = [upload(p) for p in inputs[key]]
    inputs["analogies"] = upload(inputs["analogies"])
    config_url = gcs.upload("config/tiny.yaml", yaml.safe_dump(config))
    root = gcs.url("root")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tls_proxy(gcs.endpoint, monkeypatch) as proxied:
        done = subprocess.run([sys.executable, "-m", "embedflow.cli", "run", "--config", config_url,
                               "--output-root", root], cwd=repo, capture_output=True, text=True, timeout=400,
                              check=False)
        assert done.returncode == 0, done.stderr[-4000:]
    name = gcs.download("root/latest").decode().strip()
    manifest = json.loads(gcs.download(f"root/runs/{name}/manifest.json"))
    assert manifest["status"] == "promoted" and manifest["config_file"] == config_url
    assert all(f["path"].startswith("gs://") for f in manifest["inputs"]["corpus"]["files"])
    objects = gcs.list(f"root/runs/{name}/")
    for stage in manifest["stages"]:
        directory = chain_run.STAGE_SPECS[stage].directory
        assert f"root/runs/{name}/{directory}/COMPLETED" in objects, stage
    for expected in ("embeddings/vectors.npy", "embeddings/saved_model/saved_model.pb", "corpus/vocab.tsv",
                     "digits/metrics.json", "report.md", "report.html", "report/pca.png"):
        assert f"root/runs/{name}/{expected}" in objects, expected
    assert any("/upload/" in r for r in proxied)  # TensorFlow wrote through the proxy
