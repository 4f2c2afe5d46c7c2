"""Benchmark of the embedding trainer against gensim, measured in the same run.

    python -m benchmarks.train [--corpus-output DIR] [--epochs 1] [--work DIR]

Both systems train skip-gram with negative sampling on the same corpus
(../shared/data/corpus/enwiki-AA, about 16M words) with the same hyperparameters
(dim 100, window 5, negative 5, sample 1e-3, min_count 5, the same epochs): embedflow
from the corpus job's windows (input pipeline included, `tf.data` runs beside the
training steps), gensim `Word2Vec(sg=1, workers=2)` from in-memory token lists made by
the same tokenizer (tokenizing is not timed). Words per second count in-vocabulary
corpus words before subsampling, times epochs, over training time, for both. Both
models are then scored by the same code: analogy accuracy (questions-words, top 30k
words, 3CosAdd) and WordSim-353 Spearman.
"""

import argparse
import json
import os
import sys
import tempfile

from benchmarks import common
from benchmarks.common import SHARED_DATA, print_table, run_measured


_evaluate = common.evaluate_vectors  # benchmarks/scale.py imports it from here


def train_gensim(corpus_files, args):
    from gensim.models import Word2Vec  # pylint: disable=import-outside-toplevel

    from trainer.vectors import WordVectors  # pylint: disable=import-outside-toplevel

    model, seconds, wps = common.train_gensim(
        Word2Vec, common.gensim_sentences(corpus_files), args.epochs, vector_size=args.dim, window=5,
        negative=5, sample=1e-3, min_count=5, sg=1, workers=2, seed=1)
    return WordVectors(model.wv.index_to_key, model.wv.vectors), seconds, wps


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=SHARED_DATA)
    parser.add_argument("--corpus-output", default=None,
                        help="an existing corpus job output on enwiki-AA (default: run the corpus job)")
    parser.add_argument("--work", default=None)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--dim", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--kernels", default="fused",
                        help="comma-separated --kernel values of embedflow train to measure, one row each "
                             "(fused, tf)")
    parser.add_argument("--skip-gensim", action="store_true")
    args = parser.parse_args(argv)
    work = args.work or tempfile.mkdtemp(prefix="embedflow-bench-train-")
    os.makedirs(work, exist_ok=True)
    corpus_glob = os.path.join(args.data, "corpus", "enwiki-AA", "*")
    corpus_dir = args.corpus_output
    if corpus_dir is None:
        corpus_dir = os.path.join(work, "corpus")
        run_measured([sys.executable, "-m", "jobs.corpus", "--input", corpus_glob, "--output", corpus_dir],
                     os.path.join(work, "corpus.log"))

    from trainer.vectors import WordVectors  # pylint: disable=import-outside-toplevel

    rows = []
    for kernel in args.kernels.split(","):
        emb_dir = os.path.join(work, f"embeddings-{kernel}")
        cmd = [sys.executable, "-m", "jobs.train", "--corpus", corpus_dir, "--output", emb_dir,
               "--epochs", str(args.epochs), "--dim", str(args.dim), "--kernel", kernel]
        if args.batch_size:
            cmd += ["--batch-size", str(args.batch_size)]
        _, peak = run_measured(cmd, os.path.join(work, f"train-{kernel}.log"))
        with open(os.path.join(emb_dir, "info.json"), encoding="utf-8") as f:
            training = json.load(f)["training"]
        ours = WordVectors.load(emb_dir)
        rows.append([f"embedflow ({training['kernel']} kernel)", args.epochs, f"{training['seconds']:.0f}",
                     f"{training['words_per_second']:,.0f}"]
                    + [f"{x:.3f}" for x in common.evaluate_vectors(ours, args.data)[:3]] + [f"{peak / 2**30:.2f}"])
        rows[-1].append(training["words_per_second"])
    if not args.skip_gensim:
        theirs, seconds, wps = train_gensim(common.corpus_files(args.data), args)
        for row in rows:
            row[-1] = f"{row[-1] / wps:.2f}"
        rows.append(["gensim", args.epochs, f"{seconds:.0f}", f"{wps:,.0f}"]
                    + [f"{x:.3f}" for x in common.evaluate_vectors(theirs, args.data)[:3]] + ["-", "1.00"])
    else:
        rows = [row[:-1] for row in rows]
    print(f"skip-gram on enwiki-AA, dim {args.dim}, window 5, negative 5, sample 1e-3, min_count 5, "
          f"{os.cpu_count()} cores, CPU")
    headers = ["system", "epochs", "train s", "words/s", "analogy acc", "analogy coverage",
               "WordSim-353 rho", "peak GiB"] + (["speed ratio"] if not args.skip_gensim else [])
    print_table(rows, headers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
