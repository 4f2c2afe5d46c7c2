"""embedflow's models against gensim's, each pair measured in the same run.

    python -m benchmarks.models [--files 100] [--epochs 5] [--dim 100] [--corpus-output DIR]
        [--work DIR] [--rows skipgram,cbow,subwords] [--buckets 2000000] [--repeats 1] [--data DIR]

On ../shared/data/corpus/enwiki-AA (its first --files files; all 100: about 16M words),
one row a model, each against its gensim counterpart:

    skipgram   embedflow train                   gensim Word2Vec(sg=1)
    cbow       embedflow train --model cbow      gensim Word2Vec(sg=0, cbow_mean=1)
    subwords   embedflow train --subwords        gensim FastText(sg=1)

with the same hyperparameters on both sides: dim, epochs, window 5, negative 5, sample
1e-3, min_count 5, workers 2 (embedflow: its 2 intra-op threads), the learning rate
embedflow's default for the model (skip-gram 0.025, CBOW 0.05: word2vec's) decayed
linearly to 1e-4 of it, and for subwords n-grams of 3 to 6 characters in --buckets
buckets. embedflow trains from the corpus job's output (run here, or --corpus-output,
which must hold the same --files); gensim from in-memory token lists of the same
paragraphs, tokenized by the same tokenizer graph (not timed), whose vocabulary is
checked to be embedflow's. Words per second count in-vocabulary corpus words before
subsampling, times epochs, over training time, for both. Both sides are scored by the
same code: analogy accuracy (questions-words, top 30k words, 3CosAdd) and WordSim-353
Spearman.

--repeats N trains each row N times on both sides, alternating (embedflow, gensim,
embedflow, ...), so both meet the same changes in the machine's speed (a shared 2-core
machine here varies by up to 30% from one minute to the next). The table then shows
each side's median words/s with its range, the ratio of the medians, and the quality
of the last repeat.

For the subwords row, a second table: words absent from the vocabulary (a misspelling,
an inflection, a compound: the first absent word of each list of candidates) and their 5
nearest in-vocabulary neighbours, embedflow's from the vector its SavedModel serves for
the raw string, gensim's from FastText's own out-of-vocabulary vector.

A check of the script only (minutes, not the published figures):
    python -m benchmarks.models --files 1 --epochs 1 --dim 16 --buckets 10000
"""

import argparse
import json
import os
import sys
import tempfile

import numpy as np

from benchmarks import common
from benchmarks.common import SHARED_DATA, parse_choices, print_table, run_measured

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# row: (embedflow train flags, gensim class name, gensim parameters of the model)
ROWS = {
    "skipgram": ([], "Word2Vec", {"sg": 1}),
    "cbow": (["--model", "cbow"], "Word2Vec", {"sg": 0, "cbow_mean": 1}),
    "subwords": (["--subwords"], "FastText", {"sg": 1, "min_n": 3, "max_n": 6}),
}
# Candidates of each kind of unseen word; the first one absent from the vocabulary is shown.
UNSEEN = {
    "misspelling": ["goverment", "recieved", "accomodation", "seperately", "occurence", "tommorow",
                    "beleive", "neccessary", "wierdly", "acheivement"],
    "inflection": ["unfriendliest", "reinvestigated", "overgeneralizing", "electrifyingly",
                   "misremembering", "unbureaucratic", "decolonizations"],
    "compound": ["railwaybridge", "footballstadium", "sunflowerseed", "riverboatman", "cathedraltower",
                 "trainstation", "mountainvillage"],
}


def learning_rate(row):
    from trainer.skipgram import DEFAULT_LEARNING_RATE  # pylint: disable=import-outside-toplevel

    return DEFAULT_LEARNING_RATE["cbow" if row == "cbow" else "skipgram"]


def train_embedflow(row, corpus_dir, args, work):
    """Runs `embedflow train` for a row; returns (output dir, info.json's training, peak bytes)."""
    out = os.path.join(work, f"embeddings-{row}")
    flags, _, _ = ROWS[row]
    cmd = [sys.executable, "-m", "jobs.train", "--corpus", corpus_dir, "--output", out, "--epochs",
           str(args.epochs), "--dim", str(args.dim), "--learning-rate", str(learning_rate(row)), *flags]
    if row == "subwords":
        cmd += ["--buckets", str(args.buckets)]
    print(f"... embedflow train ({row})", file=sys.stderr, flush=True)
    _, peak = run_measured(cmd, os.path.join(work, f"train-{row}.log"))
    with open(os.path.join(out, "info.json"), encoding="utf-8") as f:
        return out, json.load(f)["training"], peak


def train_gensim_row(row, sentences, args):
    """Trains gensim's counterpart of a row; returns (model, seconds, words/s)."""
    import gensim.models  # pylint: disable=import-outside-toplevel

    _, name, params = ROWS[row]
    rate = learning_rate(row)
    if name == "FastText":
        params = {**params, "bucket": args.buckets}
    print(f"... gensim {name} ({row})", file=sys.stderr, flush=True)
    return common.train_gensim(getattr(gensim.models, name), sentences, args.epochs, vector_size=args.dim,
                               window=5, negative=5, sample=1e-3, min_count=5, workers=2, seed=1, alpha=rate,
                               min_alpha=rate * 1e-4, **params)


def check_same_vocabulary(ours, model):
    """Exits unless gensim's vocabulary is embedflow's (the same tokens were read)."""
    theirs = set(model.wv.index_to_key)
    if theirs != set(ours.index_to_key):
        sys.exit(f"gensim's vocabulary ({len(theirs)} words) is not embedflow's ({len(ours)}): the corpus "
                 "output was made from other files; give --files as it was made, or leave out --corpus-output")


def nearest(vectors, vector, topn=5):
    """The `topn` in-vocabulary words closest by cosine to `vector`."""
    scores = vectors.unit_vectors @ (vector / max(float(np.linalg.norm(vector)), 1e-12))
    return [vectors.index_to_key[i] for i in np.argsort(-scores)[:topn]]


def unseen_rows(out, vectors, model):
    """The out-of-vocabulary table: for each kind, the first absent candidate and its
    neighbours, embedflow's from the SavedModel's vector, gensim's from FastText's."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from schemas import embeddings as schema  # pylint: disable=import-outside-toplevel

    served = tf.saved_model.load(os.path.join(out, schema.SAVED_MODEL_DIR)).signatures["serving_default"]
    rows = []
    for kind, candidates in UNSEEN.items():
        absent = [w for w in candidates if w not in vectors and w not in model.wv.key_to_index]
        if not absent:
            rows.append([kind, "(every candidate is in the vocabulary)", "-", "-"])
            continue
        word = absent[0]
        result = served(tf.constant([word]))
        vector = result[schema.SERVING_VECTORS].numpy()[0, 0]
        # The SavedModel hashes the n-grams in its graph; WordVectors in Python: the same vector.
        assert np.allclose(vector, vectors[word], rtol=1e-4, atol=1e-6), word
        rows.append([kind, word, ", ".join(nearest(vectors, vector)),
                     ", ".join(w for w, _ in model.wv.most_similar(word, topn=5))])
    return rows


def median_speed(runs):
    """The (seconds, words/s) of the run of median words/s (the lower middle one of an even count)."""
    ordered = sorted(runs, key=lambda run: run[1])
    return ordered[(len(ordered) - 1) // 2]


def speed_cells(runs):
    """Table cells: the median run's seconds, and its words/s with the range of all runs."""
    seconds, speed = median_speed(runs)
    if len(runs) == 1:
        return [f"{seconds:.0f}", f"{speed:,.0f}"]
    low, high = min(r[1] for r in runs), max(r[1] for r in runs)
    return [f"{seconds:.0f}", f"{speed:,.0f} ({low:,.0f}-{high:,.0f})"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=SHARED_DATA)
    parser.add_argument("--files", type=int, default=100, help="the first N files of enwiki-AA")
    parser.add_argument("--corpus-output", default=None, help="an existing corpus job output of those files")
    parser.add_argument("--work", default=None, help="where the outputs go (default: a new temp dir, kept)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--dim", type=int, default=100)
    parser.add_argument("--buckets", type=int, default=2_000_000, help="n-gram buckets of the subwords row")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of {', '.join(ROWS)}")
    parser.add_argument("--repeats", type=int, default=1,
                        help="train each row this many times on both sides, alternating; report medians")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    rows = parse_choices(parser, "--rows", args.rows, ROWS)
    # Absolute paths: the jobs run as modules of this checkout, from its root.
    args.data = os.path.abspath(args.data)
    work = os.path.abspath(args.work or tempfile.mkdtemp(prefix="embedflow-bench-models-"))
    corpus_dir = os.path.abspath(args.corpus_output) if args.corpus_output else os.path.join(work, "corpus")
    os.chdir(ROOT)
    os.makedirs(work, exist_ok=True)
    files = common.corpus_files(args.data, args.files)
    if not args.corpus_output:
        print(f"... embedflow corpus ({len(files)} files)", file=sys.stderr, flush=True)
        run_measured([sys.executable, "-m", "jobs.corpus", *[a for f in files for a in ("--input", f)],
                      "--output", corpus_dir], os.path.join(work, "corpus.log"))

    from trainer.vectors import WordVectors  # pylint: disable=import-outside-toplevel

    print("... tokenizing for gensim (not timed)", file=sys.stderr, flush=True)
    sentences = common.gensim_sentences(files)
    table, unseen = [], None
    for row in rows:
        ours_runs, theirs_runs = [], []  # (seconds, words/s) of each repeat
        for _ in range(args.repeats):
            out, training, peak = train_embedflow(row, corpus_dir, args, work)
            ours_runs.append((training["seconds"], training["words_per_second"]))
            model, seconds, wps = train_gensim_row(row, sentences, args)
            theirs_runs.append((seconds, wps))
        ours = WordVectors.load(out)
        check_same_vocabulary(ours, model)
        theirs = WordVectors(model.wv.index_to_key, model.wv.vectors)  # FastText's: composed, as ours
        ratio = median_speed(ours_runs)[1] / median_speed(theirs_runs)[1]
        for system, vectors, runs, ratio, memory in (
                ("embedflow", ours, ours_runs, ratio, f"{peak / 2**30:.2f}"),
                (f"gensim {ROWS[row][1]}", theirs, theirs_runs, 1.0, "-")):
            accuracy, _, rho, _ = common.evaluate_vectors(vectors, args.data)
            table.append([row, system, *speed_cells(runs), f"{ratio:.2f}", f"{accuracy:.3f}", f"{rho:.3f}", memory])
        if row == "subwords":
            unseen = unseen_rows(out, ours, model)
    print(f"\nenwiki-AA ({len(files)} files), {args.epochs} epoch(s), dim {args.dim}, window 5, negative 5, "
          f"sample 1e-3, min_count 5, subwords n = 3..6 in {args.buckets:,} buckets; {os.cpu_count()} cores, "
          f"gensim workers=2; outputs in {work}\n")
    speed = "words/s" if args.repeats == 1 else f"words/s (median of {args.repeats}, range)"
    print_table(table, ["model", "system", "train s", speed, "words/s / gensim's", "analogy acc (30k)",
                        "WordSim-353 rho", "peak GiB"])
    if unseen is not None:
        print("\nWords outside the vocabulary, 5 nearest in-vocabulary neighbours (embedflow: the "
              "SavedModel's vector of the raw string)\n")
        print_table(unseen, ["kind", "word", "embedflow --subwords", "gensim FastText"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
