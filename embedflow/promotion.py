"""Promotion: the metrics a run's gates read, the gates, and the `latest` pointer."""

import json
import os
import uuid

from apache_beam.io.filesystems import FileSystems

from core import outputs
from schemas.runs import LATEST_FILE, MANIFEST_FILE, RUNS_DIR, STAGE_DIRS


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def collect_metrics(run_dir, records):
    """The metrics the gates read, from the stage outputs of a run."""
    metrics = {}
    if "evaluate" in records:
        metrics.update(outputs.read_info(outputs.join(run_dir, STAGE_DIRS["evaluate"])).get("metrics", {}))
    if "digits" in records:
        m = json.loads(outputs.read_text(outputs.join(run_dir, STAGE_DIRS["digits"], "metrics.json")))
        metrics["digit_accuracy"] = m["accuracy"]
    if "sentiment" in records:
        path = outputs.join(run_dir, STAGE_DIRS["sentiment"], "metrics.json")
        if FileSystems.exists(path):
            m = json.loads(outputs.read_text(path))
            value = m.get("accuracy", m.get("pretrained"))
            if isinstance(value, dict):  # per model; the pretrained-embedding model is the one served
                value = value.get("pretrained", value.get("accuracy"))
            if _is_number(value):
                metrics["sentiment_accuracy"] = float(value)
            scratch = (m.get("scratch") or {}).get("split_accuracy", {}).get("mean")
            if _is_number(scratch):  # the same classifier from random embeddings: for the report
                metrics["sentiment_scratch_accuracy"] = float(scratch)
    return metrics


MIN_GATES = {"min_analogy_accuracy": "analogy_accuracy", "min_digit_accuracy": "digit_accuracy",
             "min_sentiment_accuracy": "sentiment_accuracy"}


REGRESSION_METRICS = ("analogy_accuracy", "similarity_spearman", "digit_accuracy", "sentiment_accuracy")


def check_gates(metrics, gates, latest_metrics=None, skipped=()):
    """Evaluates every gate.

    Args:
      metrics: this run's metrics.
      gates: the config's gates section.
      latest_metrics: the promoted run's metrics, or None when nothing is promoted.
      skipped: stages that did not run (their gates are not applied, and say so).

    Returns:
      list of dicts (gate, metric, value, threshold, passed, note).
    """
    results = []
    for gate, metric in MIN_GATES.items():
        threshold = gates.get(gate)
        if threshold is None:
            continue
        value = metrics.get(metric)
        if value is None and metric == "sentiment_accuracy" and "sentiment" in skipped:
            results.append({"gate": gate, "metric": metric, "value": None, "threshold": threshold,
                            "passed": True, "note": "sentiment stage skipped"})
            continue
        results.append({"gate": gate, "metric": metric, "value": value, "threshold": threshold,
                        "passed": value is not None and value >= threshold,
                        "note": "" if value is not None else "metric missing"})
    margin = gates.get("max_regression")
    if margin is not None and latest_metrics:
        for metric in REGRESSION_METRICS:
            old, new = latest_metrics.get(metric), metrics.get(metric)
            if old is None or new is None:
                continue
            results.append({"gate": "max_regression", "metric": metric, "value": new,
                            "threshold": old - margin, "passed": new >= old - margin,
                            "note": f"latest {old:.4f} - margin {margin}"})
    return results


def read_latest(root):
    """The name of the promoted run under `root`, or None."""
    path = outputs.join(root, LATEST_FILE)
    if not FileSystems.exists(path):
        return None
    return outputs.read_text(path).strip() or None


def write_latest(root, name):
    """Points `latest` at run `name` atomically."""
    path = outputs.join(root, LATEST_FILE)
    if outputs.is_remote(root):
        outputs.write_text(path, name + "\n")  # a single object write is atomic on GCS
        return
    temp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with open(temp, "w", encoding="utf-8") as f:
        f.write(name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)


def latest_metrics(root):
    name = read_latest(root)
    if name is None:
        return None, None
    path = outputs.join(root, RUNS_DIR, name, MANIFEST_FILE)
    if not FileSystems.exists(path):
        return name, None
    return name, json.loads(outputs.read_text(path)).get("metrics")
