"""Imported vectors against embedflow's own, on sentence polarity with K-fold cross-validation.

    python -m benchmarks.import_vectors [--folds 10] [--epochs 5] [--dim 100]
        [--gensim-tokens embedflow|raw] [--format word2vec-binary] [--cores 2]
        [--corpus-output DIR] [--embeddings DIR] [--max-files N] [--max-sentences N]
        [--compare-scratch] [--work DIR] [--data ../shared/data] [sentiment job flags ...]

Two sets of vectors of the same corpus (../shared/data/corpus/enwiki-AA, about 16M words)
and the same hyperparameters (skip-gram, dim, window 5, negative 5, sample 1e-3,
min_count 5, the same epochs):

  * embedflow: `embedflow corpus` then `embedflow train` (or --corpus-output and
    --embeddings, existing outputs of them);
  * gensim: `Word2Vec(sg=1)` on the corpus paragraphs, written by gensim's
    `save_word2vec_format` in --format, then `embedflow import-vectors` (with
    `--coverage-text` the polarity sentences). --gensim-tokens embedflow trains gensim
    on embedflow's own tokens (the comparison of the vectors alone); raw trains it on
    whitespace-split text with case and punctuation kept, as published vectors often
    are, so the import's folding decides which rows survive.

Each is then used by the same sentiment job (`python -m jobs.sentiment --format polarity
--folds K`, its defaults otherwise; flags after the benchmark's own go to it), in a
subprocess pinned to --cores CPUs; the import output is given as both --corpus and
--embeddings. The table: vocabulary, the share of the polarity tokens it covers, K-fold
accuracy (mean ± std over folds, pooled), and the times.

A quick check of the script (minutes, not the published figures):
    python -m benchmarks.import_vectors --max-files 2 --max-sentences 600 --folds 2 \\
        --epochs 1 --dim 32 --epochs-sentiment 3
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from benchmarks.common import SHARED_DATA, print_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def run_pinned(argv, log_path, cores):
    """Runs `python -m ...argv` pinned to the first `cores` CPUs. Returns wall seconds."""
    cpus = sorted(os.sched_getaffinity(0))[:cores]
    started = time.time()
    with open(log_path, "w", encoding="utf-8") as log:
        code = subprocess.call([sys.executable, "-m", *argv], cwd=ROOT, stdout=log,
                               stderr=subprocess.STDOUT,
                               preexec_fn=lambda: os.sched_setaffinity(0, cpus))
    if code != 0:
        raise SystemExit(f"{' '.join(argv[:1])} failed (exit {code}); see {log_path}")
    return time.time() - started


def polarity_slice(data_dir, work, max_sentences):
    """The polarity folder to use (a copy of the first max_sentences/2 a class, if set), and
    a UTF-8 copy of its sentences for --coverage-text."""
    folder = data_dir
    if max_sentences:
        folder = os.path.join(work, "polarity")
        os.makedirs(folder, exist_ok=True)
    lines = []
    for name in ("rt-polarity.pos", "rt-polarity.neg"):
        with open(os.path.join(data_dir, name), "rb") as f:
            kept = f.read().split(b"\n")
        if max_sentences:
            kept = kept[:max_sentences // 2]
            with open(os.path.join(folder, name), "wb") as f:
                f.write(b"\n".join(kept) + b"\n")
        lines += [line.decode("latin-1") for line in kept if line.strip()]
    text = os.path.join(work, "polarity-utf8.txt")
    with open(text, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return folder, text


def raw_token_lists(files):
    """Paragraphs as the corpus job reads them, split on whitespace only (case and punctuation kept)."""
    from pipelines import corpus  # pylint: disable=import-outside-toplevel

    reader = corpus._ReadDecodeLines("auto", 10_000_000)  # pylint: disable=protected-access
    reader.setup()
    for path in files:
        for paragraph in reader.process((path, 0, None)):
            yield paragraph.split()


def train_gensim(files, args, path):
    """Trains gensim's skip-gram and writes it in --format. Returns (seconds, vocabulary size)."""
    from gensim.models import Word2Vec  # pylint: disable=import-outside-toplevel

    from benchmarks.corpus import corpus_token_lists  # pylint: disable=import-outside-toplevel
    from trainer.formats import write_vectors  # pylint: disable=import-outside-toplevel

    lists = corpus_token_lists(files) if args.gensim_tokens == "embedflow" else raw_token_lists(files)
    sentences = list(lists)
    model = Word2Vec(vector_size=args.dim, window=5, negative=5, sample=1e-3, min_count=5, sg=1,
                     workers=args.cores, seed=1)
    model.build_vocab(sentences)
    started = time.time()
    model.train(sentences, total_examples=len(sentences), epochs=args.epochs)
    seconds = time.time() - started
    if args.format in ("word2vec", "word2vec-binary"):
        model.wv.save_word2vec_format(path, binary=args.format == "word2vec-binary")
    else:  # glove, fasttext-vec: the same rows through embedflow's writer
        write_vectors(path, model.wv.index_to_key, model.wv.vectors, args.format)
    return seconds, len(model.wv)


def sentiment(name, corpus_dir, embeddings_dir, polarity, args, job_flags, work):
    """Runs the sentiment job; returns (metrics.json, info.json, wall seconds)."""
    output = os.path.join(work, f"sentiment-{name}")
    argv = ["jobs.sentiment", "--input", os.path.abspath(polarity), "--format", "polarity",
            "--corpus", corpus_dir, "--embeddings", embeddings_dir, "--output", output,
            "--folds", str(args.folds), "--curve-sizes", "none", "--epochs", str(args.epochs_sentiment),
            *(["--compare-scratch"] if args.compare_scratch else []), *job_flags]
    print(f"... sentiment job on {name} vectors ({output}.log)", file=sys.stderr, flush=True)
    wall = run_pinned(argv, output + ".log", args.cores)
    with open(os.path.join(output, "metrics.json"), encoding="utf-8") as f:
        metrics = json.load(f)
    with open(os.path.join(output, "info.json"), encoding="utf-8") as f:
        info = json.load(f)
    return metrics, info, wall


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=SHARED_DATA)
    parser.add_argument("--work", default=None, help="where the outputs go (default: a temp dir, removed)")
    parser.add_argument("--corpus-output", default=None, help="an existing corpus job output on enwiki-AA")
    parser.add_argument("--embeddings", default=None, help="existing `embedflow train` output of it")
    parser.add_argument("--folds", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=5, help="skip-gram epochs, both systems")
    parser.add_argument("--dim", type=int, default=100)
    parser.add_argument("--epochs-sentiment", type=int, default=40, help="the sentiment job's --epochs")
    parser.add_argument("--gensim-tokens", choices=("embedflow", "raw"), default="embedflow")
    parser.add_argument("--format", default="word2vec-binary",
                        choices=("word2vec", "word2vec-binary", "glove", "fasttext-vec"),
                        help="the file format the gensim vectors go through")
    parser.add_argument("--compare-scratch", action="store_true",
                        help="also train each model from random embeddings (doubles the time)")
    parser.add_argument("--max-files", type=int, default=None, help="use only the first N corpus files")
    parser.add_argument("--max-sentences", type=int, default=None,
                        help="use only the first N/2 sentences of each polarity class")
    parser.add_argument("--cores", type=int, default=2)
    args, job_flags = parser.parse_known_args(argv)
    args.cores = min(args.cores, len(os.sched_getaffinity(0)))
    # Absolute paths: the jobs run with the repository as their working directory.
    work = os.path.abspath(args.work or tempfile.mkdtemp(prefix="embedflow-bench-import-"))
    args.data = os.path.abspath(args.data)
    os.makedirs(work, exist_ok=True)
    corpus_root = os.path.join(args.data, "corpus", "enwiki-AA")
    files = sorted(os.path.join(corpus_root, f) for f in os.listdir(corpus_root))[:args.max_files]
    try:
        polarity, coverage_text = polarity_slice(os.path.join(args.data, "sentiment", "rt-polarity"),
                                                 work, args.max_sentences)
        corpus_dir, embeddings_dir = (os.path.abspath(p) if p else None
                                      for p in (args.corpus_output, args.embeddings))
        seconds = {}
        if corpus_dir is None:
            corpus_dir = os.path.join(work, "corpus")
            print("... embedflow corpus", file=sys.stderr, flush=True)
            seconds["corpus"] = run_pinned(
                ["jobs.corpus", *[a for f in files for a in ("--input", f)], "--output", corpus_dir],
                os.path.join(work, "corpus.log"), args.cores)
        if embeddings_dir is None:
            embeddings_dir = os.path.join(work, "embeddings")
            print("... embedflow train", file=sys.stderr, flush=True)
            seconds["train"] = run_pinned(
                ["jobs.train", "--corpus", corpus_dir, "--output", embeddings_dir, "--epochs",
                 str(args.epochs), "--dim", str(args.dim)], os.path.join(work, "train.log"), args.cores)
        print(f"... gensim Word2Vec ({args.gensim_tokens} tokens)", file=sys.stderr, flush=True)
        vectors_file = os.path.join(work, "gensim-vectors")
        seconds["gensim"], gensim_vocab = train_gensim(files, args, vectors_file)
        imported = os.path.join(work, "imported")
        print("... embedflow import-vectors", file=sys.stderr, flush=True)
        seconds["import"] = run_pinned(
            ["jobs.import_vectors", "--vectors", vectors_file, "--format", args.format,
             "--output", imported, "--coverage-text", coverage_text],
            os.path.join(work, "import.log"), args.cores)

        from jobs.import_vectors import text_coverage  # pylint: disable=import-outside-toplevel

        with open(os.path.join(imported, "info.json"), encoding="utf-8") as f:
            import_info = json.load(f)
        with open(os.path.join(embeddings_dir, "info.json"), encoding="utf-8") as f:
            train_seconds = json.load(f).get("training", {}).get("seconds")  # as gensim's: training only
        systems = [("embedflow train", corpus_dir, embeddings_dir,
                    text_coverage(corpus_dir, coverage_text)["share"], train_seconds),
                   (f"gensim, imported ({args.format})", imported, imported,
                    import_info["coverage"]["share"], seconds["gensim"])]
        rows = []
        for name, corpus, embeddings, share, train_seconds in systems:
            metrics, info, wall = sentiment(name.split()[0].rstrip(","), corpus, embeddings, polarity,
                                            args, job_flags, work)
            split = metrics["pretrained"]["split_accuracy"]
            row = [name, f"{info['corpus']['vocab_size']:,}", f"{share:.1%}",
                   f"{split['mean']:.2%} ± {split['std']:.2%}", f"{metrics['accuracy']:.2%}"]
            if args.compare_scratch:
                row.append(f"{metrics['scratch']['accuracy']:.2%}")
            row += ["-" if train_seconds is None else f"{train_seconds:.0f}", f"{wall / 60:.1f}"]
            rows.append(row)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    words = import_info["words"]
    print(f"Sentence polarity, {args.folds}-fold CV; vectors of enwiki-AA ({len(files)} files), dim "
          f"{args.dim}, {args.epochs} epoch(s); {args.cores} cores. Import of the gensim vectors "
          f"({gensim_vocab:,} words, {args.gensim_tokens} tokens): kept {words['kept']:,} "
          f"({words['kept_folded']:,} folded onto another form), merged {words['merged']:,}, "
          f"dropped {words['dropped']:,} {words['dropped_by_reason']}; import {seconds['import']:.0f} s.\n")
    headers = ["vectors", "vocabulary", "polarity tokens covered", f"{args.folds}-fold accuracy",
               "pooled accuracy"] + (["scratch accuracy"] if args.compare_scratch else []) \
        + ["skip-gram train s", "sentiment min"]
    print_table(rows, headers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
