"""Digits figures: MNIST and optdigits test accuracy, and three layer strings side by side.

    python benchmarks/digits.py [--data ../shared/data/digits] [--only mnist optdigits]
                                [--cores 2] [--work DIR] [--keep]

Every model is trained by the digits job itself (`python -m jobs.digits`, with its
defaults), one subprocess per run pinned to `--cores` CPUs, so its time and peak memory
are its own. Early stopping watches a hash-chosen 10% of the *training* files
(`--eval-fraction 0.1`); test accuracy is then measured by serving the test files
through the exported SavedModel alone, so the test set takes no part in training or in
choosing the epoch.

- MNIST: train-* (60,000) to train, t10k-* (10,000) to test, 28x28 padded to 32x32;
  layers 1024-512-10 (the published 784-800-10 MLP reaches 98.4%).
- optdigits: .tra + .windep (3,731) to train, .tes (946) to test; layers 1024-10,
  1024-512-10 and 1024-512-256-10.
"""

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402  pylint: disable=wrong-import-position

from pipelines import digits  # noqa: E402  pylint: disable=wrong-import-position
from schemas import digits as schema  # noqa: E402  pylint: disable=wrong-import-position

MNIST_LAYERS = ("1024-512-10",)
OPTDIGITS_LAYERS = ("1024-10", "1024-512-10", "1024-512-256-10")
EVAL_FRACTION = 0.1


def datasets(data):
    mnist, opt = os.path.join(data, "mnist"), os.path.join(data, "optdigits")
    return {
        "mnist": {"format": "mnist", "layers": MNIST_LAYERS,
                  "train": [os.path.join(mnist, "train-*-ubyte.gz")],
                  "test": [os.path.join(mnist, "t10k-*-ubyte.gz")]},
        "optdigits": {"format": "optdigits", "layers": OPTDIGITS_LAYERS,
                      "train": [os.path.join(opt, "optdigits-orig.tra.gz"),
                                os.path.join(opt, "optdigits-orig.windep.gz")],
                      "test": [os.path.join(opt, "optdigits-orig.tes.gz")]},
    }


def load_digits(fmt, patterns):
    """All digits of the files, read by the job's own readers: (float32 [n, 1024], labels)."""
    sources, _ = digits.list_sources(patterns, fmt, None, "--test")
    images, labels, skipped = [], [], []
    for source in sources:
        if fmt == "mnist":
            found = digits.read_idx_pair(*source.paths)
        else:
            with digits.open_binary(source.paths[0]) as f:
                found = list(digits.parse_optdigits(f, source.paths[0], skipped.append))
        for image, label in found:
            images.append(image.reshape(-1))
            labels.append(label)
    if skipped:
        raise ValueError(f"test files: {len(skipped)} digits skipped ({sorted(set(skipped))})")
    return np.stack(images), np.array(labels)


def serve_accuracy(model_dir, images, labels, batch=2048):
    """Accuracy of the SavedModel's `serve` endpoint on (images, labels)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    model = tf.saved_model.load(model_dir)  # held: its endpoints do not keep it alive
    serve = getattr(model, schema.SERVE_ENDPOINT)
    predicted = np.concatenate([serve(tf.constant(images[i:i + batch])).numpy().argmax(axis=1)
                                for i in range(0, len(images), batch)])
    return float(np.mean(predicted == labels))


def run_job(name, spec, layers, output, cores, log_path):
    """Runs the digits job in a subprocess. Returns (info.json, wall seconds, peak RSS bytes)."""
    argv = [sys.executable, "-m", "jobs.digits", "--format", spec["format"],
            "--output", output, "--layers", layers, "--eval-fraction", str(EVAL_FRACTION)]
    for path in spec["train"]:
        argv += ["--input", path]
    cpus = sorted(os.sched_getaffinity(0))[:cores]
    started = time.time()
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                   preexec_fn=lambda: os.sched_setaffinity(0, cpus))
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.time() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{name} {layers} failed (exit {os.waitstatus_to_exitcode(status)}); "
                           f"see {log_path}")
    with open(os.path.join(output, "info.json"), encoding="utf-8") as f:
        info = json.load(f)
    return info, wall, usage.ru_maxrss * 1024  # ru_maxrss is in KiB on Linux


def measure(name, spec, layers, work, cores):
    output = os.path.join(work, f"{name}-{layers}")
    print(f"... {name} {layers}: training (log {output}.log)", file=sys.stderr, flush=True)
    info, wall, peak = run_job(name, spec, layers, output, cores, output + ".log")
    images, labels = load_digits(spec["format"], spec["test"])
    model = info["model"]
    return {
        "data": name, "layers": layers, "parameters": model["parameters"],
        "train_examples": model["train_examples"],
        "examples_per_parameter": model["examples_per_parameter"],
        "epochs": f"{model['best_epoch']}/{model['epochs_run']}",
        "train_accuracy": model["train_accuracy"], "eval_accuracy": model["eval_accuracy"],
        "test_examples": int(len(labels)),
        "test_accuracy": serve_accuracy(os.path.join(output, schema.MODEL_DIR), images, labels),
        "preprocess_seconds": info["seconds"]["preprocess"], "train_seconds": info["seconds"]["train"],
        "wall_seconds": round(wall, 1), "peak_rss_mib": round(peak / 2 ** 20),
    }


def table(rows):
    header = ["data", "layers", "params", "train ex.", "ex./param", "epochs kept/run",
              "train acc", "eval acc", "test acc", "preprocess s", "train s", "peak RSS MiB"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append("| " + " | ".join([
            r["data"], r["layers"], f"{r['parameters']:,}", f"{r['train_examples']:,}",
            f"{r['examples_per_parameter']:.3g}", r["epochs"], f"{r['train_accuracy']:.2%}",
            f"{r['eval_accuracy']:.2%}", f"{r['test_accuracy']:.2%} of {r['test_examples']:,}",
            f"{r['preprocess_seconds']:.0f}", f"{r['train_seconds']:.0f}",
            f"{r['peak_rss_mib']:,}"]) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "digits"),
                        help="folder holding mnist/ and optdigits/")
    parser.add_argument("--only", nargs="+", choices=("mnist", "optdigits"),
                        default=["mnist", "optdigits"])
    parser.add_argument("--cores", type=int, default=2, help="CPUs each run may use (default 2)")
    parser.add_argument("--work", default=None, help="where the runs go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the runs' outputs")
    args = parser.parse_args(argv)
    specs = datasets(os.path.abspath(args.data))
    for name in args.only:
        for pattern in specs[name]["train"] + specs[name]["test"]:
            if not glob.glob(pattern):
                raise SystemExit(f"--data {args.data}: {pattern} matches no file")
    work = args.work or tempfile.mkdtemp(prefix="digits-bench-")
    os.makedirs(work, exist_ok=True)
    cores = min(args.cores, len(os.sched_getaffinity(0)))
    rows = []
    try:
        for name in args.only:
            for layers in specs[name]["layers"]:
                rows.append(measure(name, specs[name], layers, work, cores))
                print(table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"Digits job, defaults (Adam, dropout 0.5, early stopping on a hash-chosen "
          f"{EVAL_FRACTION:.0%} of the training files); {cores} CPU cores each run; test "
          "accuracy served from the SavedModel alone.\n")
    print(table(rows))
    if args.work:
        with open(os.path.join(args.work, "digits-benchmark.json"), "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
