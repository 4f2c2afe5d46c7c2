"""The small end of a run's sentiment learning curve, over many draws instead of one.

    python -m benchmarks.curve_draws --run RUNS/runs/<run> [--sizes 100] [--draws 6]
        [--adapt-epochs 0,50] [--folds 3] [--counts corpus|rank] [--set key=value ...]

A run's curve trains each fold once per size, on the first n texts of its training fold:
at 100 texts one draw decides a lot (the fold's accuracy varies by 2-3 points from draw
to draw). This takes the run's corpus, vectors and sentiment examples, and for every
fold trains on `--draws` disjoint sets of n texts (texts d*n .. (d+1)*n - 1 of the
fold's curve order, so draw 0 is the run's own), pretrained (once per value of
`--adapt-epochs`, adapted on the fold's training texts as the sentiment job does) and
scratch, each tested on the fold's held-out texts. `--counts rank` adapts with the counts
`embedflow import-vectors` gives a file's words (row i: vocabulary size - i) in place of
the corpus counts, to measure what adaptation does for imported vectors, which have
none. The sentiment settings are the run's
(its stage's info.json), with `--set` overriding any of them. Prints a table of
mean +- std over folds x draws, and the gap to scratch.
"""

import argparse
import glob
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402  pylint: disable=wrong-import-position
import numpy as np  # noqa: E402  pylint: disable=wrong-import-position

from benchmarks.common import print_table  # noqa: E402  pylint: disable=wrong-import-position
from jobs import sentiment as sentiment_job  # noqa: E402  pylint: disable=wrong-import-position
from trainer import sentiment as trainer  # noqa: E402  pylint: disable=wrong-import-position


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a run directory of `embedflow run` (with a sentiment stage)")
    parser.add_argument("--sizes", default="100", help="training-set sizes, comma-separated")
    parser.add_argument("--draws", type=int, default=6, help="disjoint training sets per fold and size")
    parser.add_argument("--adapt-epochs", default="0,50", help="pretrained rows to measure, comma-separated")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--counts", choices=("corpus", "rank"), default="corpus",
                        help="what adaptation subsamples and draws noise by: the corpus counts, or the "
                             "rank counts an imported file's words get")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a sentiment setting (JSON value), e.g. --set fine_tune_rate=0.3")
    args = parser.parse_args(argv)
    for flag, stage in (("corpus", "corpus"), ("embeddings", "embeddings"), ("sentiment", "sentiment")):
        if not os.path.exists(os.path.join(args.run, stage, "COMPLETED")):
            parser.error(f"--run {args.run}: no completed {flag} stage ({stage}/COMPLETED); pass a run "
                         f"directory of `embedflow run` that ran sentiment")
    return args


def run_config(args):
    """The run's sentiment settings (its info.json), with --set applied."""
    with open(os.path.join(args.run, "sentiment", "info.json"), encoding="utf-8") as f:
        recorded = json.load(f)["parameters"]
    values = {k: v for k, v in recorded.items() if k in trainer.SentimentConfig.model_fields}
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in trainer.SentimentConfig.model_fields:
            raise SystemExit(f"--set {item}: {key} is not a sentiment setting")
        values[key] = json.loads(value)
    return trainer.SentimentConfig(**values)


def main(argv=None):
    args = parse_args(argv)
    config = run_config(args)
    _, _, counts = sentiment_job.check_inputs(os.path.join(args.run, "corpus"), os.path.join(args.run, "embeddings"))
    if args.counts == "rank":  # jobs/import_vectors.py: the file has no counts, row i gets vocab_size - i
        counts = len(counts) - np.arange(len(counts))
    examples = trainer.load_examples(sorted(glob.glob(os.path.join(args.run, "sentiment", "examples", "train-*"))))
    data = trainer.Data(examples, None, trainer.load_vectors(os.path.join(args.run, "embeddings"), len(counts)),
                        ("neg", "pos"), counts)
    pool, units, _ = trainer.make_splits(examples, None, args.folds, None)
    sizes = [int(s) for s in args.sizes.split(",")]
    arms = [("pretrained", int(e)) for e in args.adapt_epochs.split(",")] + [("scratch", 0)]
    accuracies = {(arm, n): [] for arm in arms for n in sizes}
    for name, train_at, test_at in units:
        train_set, test_set = pool.take(train_at), pool.take(test_at)
        order = trainer.curve_order(train_set.keys)
        for init, epochs in arms:
            unit_config = config.model_copy(update={"adapt_epochs": epochs})
            vectors = trainer.unit_vectors(unit_config, data, train_set, name)
            for n in sizes:
                for d in range(args.draws):
                    if (d + 1) * n > len(train_set):
                        break
                    trained = trainer.fit(config, train_set.take(order[d * n:(d + 1) * n]), vectors=vectors,
                                          pretrained=init == "pretrained", num_classes=2,
                                          seed_parts=(name, n) + ((d,) if d else ()))
                    probabilities = trainer.predict(trained.model, test_set)
                    accuracies[(init, epochs), n].append(float(np.mean(probabilities.argmax(1) == test_set.labels)))
                    keras.backend.clear_session(free_memory=False)
            print(f"{name}, {init} (adapt {epochs}): " + ", ".join(
                f"{n}: {100 * np.mean(accuracies[(init, epochs), n]):.1f}%" for n in sizes), flush=True)
    table = []
    for n in sizes:
        scratch = np.mean(accuracies[("scratch", 0), n])
        for init, epochs in arms:
            values = accuracies[(init, epochs), n]
            label = f"pretrained, adapt {epochs}" if init == "pretrained" else "scratch"
            label += f" ({args.counts} counts)" if init == "pretrained" and epochs else ""
            table.append([f"{n:,}", label, len(values), f"{100 * np.mean(values):.1f}% +- {100 * np.std(values):.1f}",
                          "" if init == "scratch" else f"{100 * (np.mean(values) - scratch):+.1f}"])
    print_table(table, ["texts", "embeddings", "models", "accuracy", "vs scratch (points)"])


if __name__ == "__main__":
    main()
