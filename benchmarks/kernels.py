"""Words per second of each fused CPU kernel op (trainer/kernels), the op alone.

    python -m benchmarks.kernels [--corpus DIR | --source enwiki|zipf] [--words N]
                                 [--epochs 1] [--ops skipgram-exact,skipgram-fast,...]

The token stream is fixed: with --corpus, the window records of a corpus job output
(`embedflow corpus`; its vocabulary and runs, as the trainer reads them, the first
--words tokens in file order); else the first --files files of
../shared/data/corpus/enwiki-AA tokenized by the corpus job's tokenizer (vocabulary: min
count 5 within the slice, ordered by (-count, token); a paragraph is a run); or with
--source zipf a synthetic stream of --words tokens drawn from a Zipf-Mandelbrot law over
--vocab made-up words in runs of 100. The trainer's draws are imitated in numpy: word2vec subsampling
(1e-3), a dynamic window radius in 1..5 per centre, batches of 16384 kept tokens, the
learning rate decayed linearly from 0.025. Vectors as the trainer starts them: inputs
uniform in +-0.5/dim, outputs zero (with subwords, --buckets n-gram rows after the
vocabulary rows). Only the op calls are timed: words/s counts in-vocabulary words
before subsampling, times epochs, over those seconds, as `embedflow train` does (its
figure also pays for the tf.data pipeline that runs beside the steps). words/CPU-s
divides by the CPU time of the process instead (all threads): on a machine shared with
other work it moves less than wall time; on an idle machine with c cores words/s
approaches c times it.

Ops: skipgram-exact (word2vec's pair-by-pair update), skipgram-fast (negatives shared
by a centre's contexts, the trainer's default), cbow, skipgram-subwords and
cbow-subwords (fastText n-grams, 3..6 characters).
"""

import argparse
import os
import sys
import time

import numpy as np

from benchmarks.common import SHARED_DATA, parse_choices, print_table

OPS = ("skipgram-exact", "skipgram-fast", "cbow", "skipgram-subwords", "cbow-subwords")
WINDOW, SAMPLE, BATCH, NEGATIVES, LEARNING_RATE, MAX_SPAN = 5, 1e-3, 16384, 5, 0.025, 1000


def enwiki_stream(data, files, min_count=5):
    """(vocab, counts, ids, runs) of the first `files` files of enwiki-AA."""
    from benchmarks.corpus import corpus_token_lists  # pylint: disable=import-outside-toplevel

    folder = os.path.join(data, "corpus", "enwiki-AA")
    paths = sorted(os.path.join(folder, f) for f in os.listdir(folder))[:files]
    paragraphs = list(corpus_token_lists(paths))
    counts = {}
    for tokens in paragraphs:
        for t in tokens:
            counts[t] = counts.get(t, 0) + 1
    vocab = sorted((t for t, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t))
    index = {t: i for i, t in enumerate(vocab)}
    ids, runs = [], []
    for tokens in paragraphs:
        kept = [index[t] for t in tokens if t in index]
        for start in range(0, len(kept), MAX_SPAN):  # the corpus job's --max-span
            span = kept[start:start + MAX_SPAN]
            runs.extend([runs[-1] + 1 if runs else 0] * len(span))
            ids.extend(span)
    return vocab, np.array([counts[t] for t in vocab], np.int64), np.array(ids, np.int64), np.array(runs, np.int64)


def corpus_stream(directory, words):
    """(vocab, counts, ids, runs): the first `words` tokens of a corpus job output."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from schemas import corpus as corpus_schema  # pylint: disable=import-outside-toplevel

    with open(os.path.join(directory, corpus_schema.VOCAB_FILE), encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f]
    folder = os.path.join(directory, corpus_schema.WINDOWS_DIR)
    files = sorted(os.path.join(folder, name) for name in os.listdir(folder))
    ids, runs, total = [], [], 0
    for serialized in tf.data.TFRecordDataset(files).batch(4096):
        parsed = tf.io.parse_example(serialized, corpus_schema.WINDOWS_FEATURE_SPEC)
        sparse = parsed[corpus_schema.TOKEN_IDS_KEY]
        ids.append(sparse.values.numpy())
        runs.append(sparse.indices[:, 0].numpy() + (runs[-1][-1] + 1 if runs else 0))
        total += len(ids[-1])
        if total >= words:
            break
    ids, runs = np.concatenate(ids)[:words], np.concatenate(runs)[:words]
    return [r[0] for r in rows], np.array([int(r[1]) for r in rows], np.int64), ids, runs


def zipf_stream(words, vocab_size, seed=1):
    """(vocab, counts, ids, runs): `words` tokens from a Zipf-Mandelbrot law, runs of 100."""
    rng = np.random.RandomState(seed)
    weights = 1.0 / (np.arange(vocab_size) + 2.7) ** 1.07
    ids = rng.choice(vocab_size, size=words, p=weights / weights.sum()).astype(np.int64)
    counts = np.bincount(ids, minlength=vocab_size).astype(np.int64)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    lengths = np.clip(rng.poisson(6, vocab_size), 1, 15)
    vocab = ["".join(rng.choice(letters, n)) + str(i) for i, n in enumerate(lengths)]  # unique
    counts = np.maximum(counts, 1)  # every word seen, so subsampling is defined
    return vocab, counts, ids, np.arange(words, dtype=np.int64) // 100


def make_batches(ids, runs, counts, seed):
    """The trainer's draws for one epoch: [(ids, rows, radius)] of BATCH kept tokens."""
    from trainer.skipgram import keep_probabilities  # pylint: disable=import-outside-toplevel

    rng = np.random.RandomState(seed)
    kept = rng.uniform(size=len(ids)) < keep_probabilities(counts, SAMPLE)[ids]
    ids, runs = ids[kept], runs[kept]
    radius = rng.randint(1, WINDOW + 1, size=len(ids)).astype(np.int32)
    return [(ids[s:s + BATCH], runs[s:s + BATCH], radius[s:s + BATCH]) for s in range(0, len(ids), BATCH)]


def make_step(op, vocab, counts, dim, buckets):
    """(input variable, output variable, step(batch, lr, seed) -> (loss, count))."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from trainer import kernels, subwords  # pylint: disable=import-outside-toplevel

    rng = np.random.RandomState(0)
    extra = buckets if op.endswith("subwords") else 0
    inputs = tf.Variable(rng.uniform(-0.5 / dim, 0.5 / dim, (len(vocab) + extra, dim)).astype(np.float32))
    outputs = tf.Variable(np.zeros((len(vocab), dim), np.float32))
    prob, alias = (tf.constant(t) for t in kernels.alias_table(counts ** 0.75))
    table = subwords.ngram_table(vocab, buckets=buckets) if extra else None
    if table is not None:
        table = subwords.SubwordTable(tf.constant(table.offsets), tf.constant(table.rows))

    def step(batch, lr, seed):
        common = (inputs, outputs, *batch, prob, alias, lr, seed, False, NEGATIVES)
        if op in ("skipgram-exact", "skipgram-fast"):
            return kernels.skipgram_step(*common, shared_negatives=op == "skipgram-fast")
        if op == "skipgram-subwords":
            return kernels.subword_skipgram_step(*common, table)
        return kernels.cbow_step(*common, subwords=table)

    return inputs, step


def measure(op, stream, args):
    """Trains `op` for --epochs over the stream.

    Returns:
      (op seconds, words/s, words per CPU-second of the process, pairs or centres per s).
    """
    vocab, counts, ids, runs = stream
    inputs, step = make_step(op, vocab, counts, args.dim, args.buckets)
    epochs = [make_batches(ids, runs, counts, seed=epoch) for epoch in range(args.epochs)]
    total = sum(len(e) for e in epochs)
    step(epochs[0][0], np.float32(0.0), 0)  # builds/loads the kernel outside the timing
    seconds = cpu = examples = 0.0
    done = 0
    for batches in epochs:
        for batch in batches:
            lr = np.float32(LEARNING_RATE * max(1e-4, 1.0 - done / total))
            start, start_cpu = time.perf_counter(), time.process_time()
            _, count = step(batch, lr, done)
            seconds += time.perf_counter() - start
            cpu += time.process_time() - start_cpu
            examples += float(count)
            done += 1
    if not np.isfinite(inputs.numpy()).all():
        raise RuntimeError(f"{op}: the vectors are not finite after training")
    words = len(ids) * args.epochs
    return seconds, words / seconds, words / cpu, examples / seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=SHARED_DATA)
    parser.add_argument("--corpus", default=None, metavar="DIR",
                        help="a corpus job output to read the stream from (default: tokenize --files)")
    parser.add_argument("--source", choices=("enwiki", "zipf"), default="enwiki")
    parser.add_argument("--files", type=int, default=20, help="enwiki-AA files to read (of 100)")
    parser.add_argument("--words", type=int, default=3_000_000, help="tokens read with --corpus or --source zipf")
    parser.add_argument("--vocab", type=int, default=100_000, help="words of the zipf stream")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--dim", type=int, default=100)
    parser.add_argument("--buckets", type=int, default=2_000_000, help="n-gram rows with subwords")
    parser.add_argument("--ops", default=",".join(OPS), help=f"comma-separated, of {', '.join(OPS)}")
    args = parser.parse_args(argv)
    ops = parse_choices(parser, "--ops", args.ops, OPS)
    start = time.time()
    if args.corpus:
        stream, source = corpus_stream(args.corpus, args.words), args.corpus
    elif args.source == "enwiki":
        stream, source = enwiki_stream(args.data, args.files), f"enwiki-AA, {args.files} files"
    else:
        stream, source = zipf_stream(args.words, args.vocab), "zipf"
    print(f"{source}: {len(stream[2]):,} in-vocabulary tokens, {len(stream[0]):,} words "
          f"(read in {time.time() - start:.0f} s); dim {args.dim}, window {WINDOW}, negatives "
          f"{NEGATIVES}, sample {SAMPLE}, batch {BATCH}, {args.epochs} epoch(s), {os.cpu_count()} cores")
    results = [measure(op, stream, args) for op in ops]
    rows = [[op, f"{seconds:.1f}", f"{wps:,.0f}", f"{per_cpu:,.0f}", f"{eps:,.0f}",
             f"{per_cpu / results[0][2]:.2f}"]
            for op, (seconds, wps, per_cpu, eps) in zip(ops, results)]
    print_table(rows, ["op", "op seconds", "words/s", "words/CPU-s", "pairs (cbow: centres)/s",
                       f"words/CPU-s vs {ops[0]}"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
