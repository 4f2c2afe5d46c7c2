"""Sentiment figures: sentence polarity, 10-fold cross-validation, pretrained against scratch.

    python benchmarks/sentiment.py --corpus DIR --embeddings DIR
        [--data ../shared/data/sentiment/rt-polarity] [--folds 10]
        [--curve-sizes 100,300,500,1000,3000] [--cores 2] [--work DIR] [--keep] [job flags ...]

`--corpus` is a corpus job output and `--embeddings` the embeddings trained from it (for
the published figures: enwiki-AA, `embedflow corpus --min-count 5` then `embedflow train`).
The sentiment job itself (`python -m jobs.sentiment --format polarity --folds K
--compare-scratch`, its defaults otherwise) runs in one subprocess pinned to `--cores`
CPUs, so its time and peak memory are its own; flags after the benchmark's own go to it.
Its metrics.json gives the table: K-fold accuracy of the model from the trained
embeddings (fine-tuned) and of the same model from random embeddings, on the same folds,
and the learning curve (mean accuracy over the K test folds when training on the first n
sentences of each training fold). The exported SavedModel is then served on a few raw
sentences, with the corpus and embeddings directories out of its reach.

Published anchors on the same data (10-fold CV, Iyyer et al. 2015, table 1): neural bag
of words from random embeddings 76.2%, NBOW with GloVe 79.0%, deep averaging network
80.3%. Gates of issue 5: accuracy >= 76%, and with 500 training sentences pretrained
beats scratch by >= 5 points.
"""

import argparse
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

from schemas import sentiment as schema  # noqa: E402  pylint: disable=wrong-import-position

ANCHORS = (("NBOW, random embeddings (Iyyer et al. 2015)", 0.762),
           ("NBOW, GloVe (Iyyer et al. 2015)", 0.790),
           ("DAN, GloVe (Iyyer et al. 2015)", 0.803))
SHOWN_PARAMETERS = ("hidden", "hidden_layers", "fine_tune", "fine_tune_rate", "standardize", "dropout",
                    "word_dropout", "batch_size", "learning_rate", "normalize", "adapt_epochs")
GATE_ACCURACY = 0.76
GATE_SIZE, GATE_GAP = 500, 0.05
SERVE_EXAMPLES = ("a gorgeous , witty , seductive movie .",
                  "the plot is nothing but boilerplate clichés from start to finish .",
                  "an utterly charming and hilarious film that reminded me why i love the movies .",
                  "it's a dull , lifeless mess .")


def run_job(argv, cores, log_path):
    """Runs the sentiment job in a subprocess. Returns (wall seconds, peak RSS bytes)."""
    cpus = sorted(os.sched_getaffinity(0))[:cores]
    started = time.time()
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen([sys.executable, "-m", "jobs.sentiment", *argv], cwd=ROOT,
                                   stdout=log, stderr=subprocess.STDOUT,
                                   preexec_fn=lambda: os.sched_setaffinity(0, cpus))
        _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"the sentiment job failed (exit {os.waitstatus_to_exitcode(status)}); "
                         f"see {log_path}")
    return time.time() - started, usage.ru_maxrss * 1024  # ru_maxrss is in KiB on Linux


def serve(model_dir, texts):
    """Classes and positive-class probabilities from the SavedModel alone."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    model = tf.saved_model.load(model_dir)  # held: its signatures do not keep it alive
    result = model.signatures["serving_default"](tf.constant(list(texts)))
    classes = [c.decode("utf-8") for c in result[schema.SERVING_CLASSES].numpy()]
    return classes, result[schema.SERVING_PROBABILITIES].numpy()[:, -1].tolist()


def tables(metrics, wall, peak):
    """Markdown tables of the results: accuracies, learning curve, gates."""
    curve = metrics["learning_curve"]
    pretrained, scratch = metrics["pretrained"], metrics["scratch"]
    lines = ["| model | 10-fold accuracy (mean ± std over folds) | pooled accuracy |",
             "|---|---|---|"]
    for name, result in (("averaged embeddings + dense, trained embeddings (fine-tuned)", pretrained),
                         ("same model, random embeddings (scratch)", scratch)):
        split = result["split_accuracy"]
        lines.append(f"| {name} | {split['mean']:.2%} ± {split['std']:.2%} | {result['accuracy']:.2%} |")
    for name, value in ANCHORS:
        lines.append(f"| published: {name} | {value:.1%} | |")
    lines += ["", "| training sentences | " + " | ".join(
        f"{n} ({s:,.0f})" if n == "all" else n for n, s in zip(curve["size_names"], curve["sizes"]))
        + " |", "|---|" + "---|" * len(curve["sizes"])]
    for init in ("pretrained", "scratch"):
        lines.append(f"| {init} | " + " | ".join(f"{p['mean']:.2%}" for p in curve[init]) + " |")
    lines.append("| pretrained − scratch | " + " | ".join(
        f"{(p['mean'] - s['mean']) * 100:+.1f} pts" for p, s in zip(curve["pretrained"], curve["scratch"]))
        + " |")
    gaps = dict(zip(curve["size_names"], (p["mean"] - s["mean"] for p, s in
                                          zip(curve["pretrained"], curve["scratch"]))))
    accuracy = pretrained["split_accuracy"]["mean"]
    gap = gaps.get(str(GATE_SIZE))
    lines += ["",
              f"- gate accuracy >= {GATE_ACCURACY:.0%}: {accuracy:.2%} -> "
              f"{'PASS' if accuracy >= GATE_ACCURACY else 'FAIL'}",
              f"- gate pretrained - scratch at {GATE_SIZE} sentences >= {GATE_GAP * 100:.0f} pts: "
              + (f"{gap * 100:+.1f} pts -> {'PASS' if gap >= GATE_GAP else 'FAIL'}" if gap is not None
                 else f"not measured (add {GATE_SIZE} to --curve-sizes)"),
              f"- whole job: {wall / 60:.1f} min wall, peak RSS {peak / 2 ** 20:,.0f} MiB"]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", required=True, help="corpus job output (COMPLETED)")
    parser.add_argument("--embeddings", required=True, help="embeddings trained from --corpus")
    parser.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "sentiment",
                                                       "rt-polarity"),
                        help="folder holding rt-polarity.pos and rt-polarity.neg")
    parser.add_argument("--folds", type=int, default=10)
    parser.add_argument("--curve-sizes", default="100,300,500,1000,3000")
    parser.add_argument("--cores", type=int, default=2, help="CPUs the job may use (default 2)")
    parser.add_argument("--work", default=None, help="where the run goes (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the run's output")
    args, job_flags = parser.parse_known_args(argv)
    for name in ("rt-polarity.pos", "rt-polarity.neg"):
        if not os.path.exists(os.path.join(args.data, name)):
            raise SystemExit(f"--data {args.data}: {name} is missing")
    work = args.work or tempfile.mkdtemp(prefix="sentiment-bench-")
    os.makedirs(work, exist_ok=True)
    output = os.path.join(work, "sentiment")
    cores = min(args.cores, len(os.sched_getaffinity(0)))
    try:
        print(f"... sentiment job, {args.folds}-fold CV (log {output}.log)", file=sys.stderr, flush=True)
        wall, peak = run_job(["--input", os.path.abspath(args.data), "--format", "polarity",
                              "--corpus", args.corpus, "--embeddings", args.embeddings,
                              "--output", output, "--folds", str(args.folds), "--compare-scratch",
                              "--curve-sizes", args.curve_sizes, *job_flags],
                             cores, output + ".log")
        with open(os.path.join(output, schema.METRICS_FILE), encoding="utf-8") as f:
            metrics = json.load(f)
        with open(os.path.join(output, "info.json"), encoding="utf-8") as f:
            info = json.load(f)
        classes, positive = serve(os.path.join(output, schema.MODEL_DIR), SERVE_EXAMPLES)
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    counts = info["counts"]
    print(f"Sentiment job on sentence polarity ({counts.get('examples_train', 0):,} sentences, "
          f"{counts.get('oov_tokens', 0) / max(counts.get('tokens', 1), 1):.1%} of tokens outside "
          f"the corpus vocabulary of {info['corpus']['vocab_size']:,}); embeddings "
          f"{args.embeddings} (dim {info['embeddings']['parameters'].get('dim')}, "
          f"{info['embeddings']['parameters'].get('epochs')} epoch(s)); {cores} CPU cores; "
          f"parameters {json.dumps({k: v for k, v in info['parameters'].items() if k in SHOWN_PARAMETERS})}\n")
    print(tables(metrics, wall, peak))
    print("\nServed from the exported SavedModel (raw strings in):")
    for text, label, p in zip(SERVE_EXAMPLES, classes, positive):
        print(f"- {label} (p(pos) {p:.2f}): {text}")
    if args.work:
        with open(os.path.join(args.work, "sentiment-benchmark.json"), "w", encoding="utf-8") as f:
            json.dump({"metrics": metrics, "wall_seconds": wall, "peak_rss_bytes": peak}, f, indent=2)


if __name__ == "__main__":
    main()
