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
import time

from benchmarks.common import SHARED_DATA, print_table, run_measured


def _evaluate(vectors, data):
    from trainer import evaluate  # pylint: disable=import-outside-toplevel

    result = evaluate.evaluate(vectors, os.path.join(data, "eval", "questions-words.txt"),
                               [os.path.join(data, "eval", "wordsim353.tsv")])
    sim = result["similarity"]["wordsim353.tsv"]
    return result["analogies"]["accuracy"], result["analogies"]["coverage"], sim["spearman"], sim["covered"]


def train_gensim(corpus_files, args):
    from gensim.models import Word2Vec  # pylint: disable=import-outside-toplevel

    from benchmarks.corpus import corpus_token_lists  # pylint: disable=import-outside-toplevel
    from trainer.vectors import WordVectors  # pylint: disable=import-outside-toplevel

    sentences = list(corpus_token_lists(corpus_files))
    model = Word2Vec(vector_size=args.dim, window=5, negative=5, sample=1e-3, min_count=5, sg=1,
                     workers=2, seed=1)
    model.build_vocab(sentences)
    in_vocab = sum(model.wv.get_vecattr(w, "count") for w in model.wv.index_to_key)
    start = time.time()
    model.train(sentences, total_examples=len(sentences), epochs=args.epochs)
    seconds = time.time() - start
    vectors = WordVectors(model.wv.index_to_key, model.wv.vectors)
    return vectors, seconds, in_vocab * args.epochs / seconds


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
                    + [f"{x:.3f}" for x in _evaluate(ours, args.data)[:3]] + [f"{peak / 2**30:.2f}"])
        rows[-1].append(training["words_per_second"])
    if not args.skip_gensim:
        files = sorted(os.path.join(args.data, "corpus", "enwiki-AA", f)
                       for f in os.listdir(os.path.join(args.data, "corpus", "enwiki-AA")))
        theirs, seconds, wps = train_gensim(files, args)
        for row in rows:
            row[-1] = f"{row[-1] / wps:.2f}"
        rows.append(["gensim", args.epochs, f"{seconds:.0f}", f"{wps:,.0f}"]
                    + [f"{x:.3f}" for x in _evaluate(theirs, args.data)[:3]] + ["-", "1.00"])
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
