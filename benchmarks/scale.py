"""Benchmark of the trainer at scale: every topology, its speed, quality and exchanged bytes.

    python -m benchmarks.scale [--files 100] [--epochs 5] [--dim 100] [--corpus-output DIR]
                               [--rows fused,workers,tf1k,tf64k,tf64k-one,replicas]
                               [--synthetic-vocab 1000000] [--bytes-corpus DIR] [--work DIR]
                               [--seeds 1]

From one run, on ../shared/data/corpus/enwiki-AA (the first --files files; all 100 are
about 16M words), dim 100, window 5, negative 5, the same epochs for every row:

  fused      one process, the fused kernel on 2 threads: the reference
  workers    2 workers on localhost (MultiWorkerMirroredStrategy), the fused kernel on 1
             thread each, exchanging their tables (trainer/exchange.py)
  tf1k       the tf kernel, 1,024-token steps (what it was capped at before)
  tf64k      the tf kernel, 65,536-token steps compiled with XLA, applied as 1,024-token updates
  tf64k-one  the tf kernel, one 65,536-token update a step (stable; it learns less a word)
  replicas   the tf kernel on 2 replicas (MirroredStrategy over 2 logical CPUs), 65,536-token steps

Each row: words/s (in-vocabulary corpus words, before subsampling, times epochs, over
training time, as `embedflow train` reports them), the ratio to the reference, analogy
accuracy (questions-words, top 30k words) and WordSim-353 Spearman, and the bytes the
replicas exchanged per trained word. With --seeds 1,2,3 every row trains once per seed
(`embedflow train --seed`: the initial vectors and every draw): the table then gives the
median words/s and the mean +- standard deviation of the scores, so a difference between
rows can be told from the spread of one row's draws. A second table gives bytes per trained word, before
(the tf kernel's replicas all-reduced both dense tables every 1,024-token step) and now,
at the real vocabulary and at a synthetic one of --synthetic-vocab words (a Zipf text;
the tf kernel's replicas measured over a few steps, the fused workers over one epoch,
with what an exchange of only the rows each worker changed would have sent instead).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

from benchmarks.common import SHARED_DATA, print_table, run_measured
from benchmarks.train import _evaluate

# Two replicas on one CPU: what tests/test_trainer.py's MIRRORED_SCRIPT does. With
# --stats-only, trains without exporting and prints the training stats.
REPLICAS_SCRIPT = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from core.main import run_job
from jobs import train as train_job
from trainer import skipgram
if sys.argv[1] == "--stats-only":
    print("STATS " + json.dumps(skipgram.train(train_job.parse_args(sys.argv[2:]))[1]))
else:
    sys.exit(run_job("train", train_job.run, sys.argv[1:]))  # its progress logged, as the CLI's
"""

# One fused-kernel worker of several (TF_CONFIG): trains without exporting, prints its stats.
WORKER_STATS_SCRIPT = """
import json, sys
from jobs import train as train_job
from trainer import skipgram
print("STATS " + json.dumps(skipgram.train(train_job.parse_args(sys.argv[1:]))[1]))
"""

TRAIN = [sys.executable, "-m", "jobs.train"]
ROWS = {  # name: (label, command before the common flags, extra flags, threads)
    "fused": ("one process, fused kernel, 2 threads (reference)", TRAIN, ["--kernel", "fused"], 2),
    "workers": ("2 workers on localhost, fused kernel, 1 thread each", TRAIN,
                ["--kernel", "fused", "--strategy", "multiworker"], 1),
    "tf1k": ("tf kernel, 1,024-token steps", TRAIN, ["--kernel", "tf", "--batch-size", "1024"], 2),
    "tf64k": ("tf kernel, 65,536-token steps (XLA), 1,024-token updates", TRAIN,
              ["--kernel", "tf", "--batch-size", "65536", "--update-tokens", "1024"], 2),
    "tf64k-one": ("tf kernel, 65,536-token steps (XLA), one update a step", TRAIN,
                  ["--kernel", "tf", "--batch-size", "65536", "--update-tokens", "65536"], 2),
    "replicas": ("tf kernel, 2 replicas (MirroredStrategy), 65,536-token steps",
                 [sys.executable, "-c", REPLICAS_SCRIPT], ["--kernel", "tf", "--strategy", "mirrored",
                                                           "--batch-size", "65536"], 2),
}


def _env(threads, tf_config=None):
    """`env` arguments that set the intra-op threads (and a worker's TF_CONFIG)."""
    values = [f"TF_NUM_INTRAOP_THREADS={threads}"] + ([f"TF_CONFIG={json.dumps(tf_config)}"] if tf_config else [])
    return ["env", *values]


def _free_ports(n):
    import socket  # pylint: disable=import-outside-toplevel

    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run_workers(argv, threads, log_prefix):
    """Runs `argv` as two workers on localhost; returns when both are done."""
    workers = [f"localhost:{p}" for p in _free_ports(2)]

    def config(index):
        return {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}

    with open(f"{log_prefix}-1.log", "w", encoding="utf-8") as log:
        other = subprocess.Popen(_env(threads, config(1)) + argv, stdout=log, stderr=subprocess.STDOUT)
        try:
            run_measured(_env(threads, config(0)) + argv, f"{log_prefix}-0.log")
        finally:
            if other.wait(timeout=600) != 0:
                sys.exit(f"worker 1 failed; see {log_prefix}-1.log")


def train_row(name, corpus_dir, args, work, seed=1):
    """Trains one row's configuration; returns its info.json "training" and its vectors' scores."""
    from trainer.vectors import WordVectors  # pylint: disable=import-outside-toplevel

    _, command, extra, threads = ROWS[name]
    label = name if seed == 1 else f"{name}-seed{seed}"
    out = os.path.join(work, f"embeddings-{label}")
    argv = command + ["--corpus", corpus_dir, "--output", out, "--epochs", str(args.epochs),
                      "--dim", str(args.dim), "--seed", str(seed), *extra]
    if name == "workers":
        run_workers(argv, threads, os.path.join(work, f"train-{label}"))
    else:
        run_measured(_env(threads) + argv, os.path.join(work, f"train-{label}.log"))
    with open(os.path.join(out, "info.json"), encoding="utf-8") as f:
        training = json.load(f)["training"]
    return training, _evaluate(WordVectors.load(out), args.data)


def make_corpus(inputs, out, log, *flags):
    if not os.path.exists(os.path.join(out, "COMPLETED")):
        argv = [sys.executable, "-m", "jobs.corpus", "--output", out, *flags]
        run_measured(argv + [a for path in inputs for a in ("--input", path)], log)
    return out


def synthetic_corpus(work, vocab, seed=1):
    """A corpus job output over a Zipf text holding each of `vocab` made-up words at least once."""
    import numpy as np  # pylint: disable=import-outside-toplevel

    out, text = os.path.join(work, f"corpus-synthetic-{vocab}"), os.path.join(work, f"synthetic-{vocab}.txt")
    if not os.path.exists(os.path.join(out, "COMPLETED")):
        rng = np.random.default_rng(seed)
        ranks = np.concatenate([np.arange(vocab), np.minimum(rng.zipf(1.1, 2 * vocab), vocab) - 1])
        rng.shuffle(ranks)
        with open(text, "w", encoding="utf-8") as f:
            f.writelines(" ".join(f"w{r}" for r in line) + "\n" for line in np.array_split(ranks, len(ranks) // 100))
    return make_corpus([text], out, os.path.join(work, "corpus-synthetic.log"), "--min-count", "1")


def words_per_token(corpus_dir):
    """Corpus words a kept (subsampled) token stands for, on average."""
    from trainer import skipgram  # pylint: disable=import-outside-toplevel

    corpus = skipgram.load_corpus(corpus_dir)
    kept = (corpus.counts * skipgram.keep_probabilities(corpus.counts, corpus.sample)).sum()
    return corpus.total_words / float(kept), len(corpus.vocab)


def replica_bytes_per_word(corpus_dir, args, out):
    """The tf kernel's bytes per trained word, 2 replicas, measured over a few steps."""
    shutil.rmtree(out + ".checkpoints", ignore_errors=True)  # a short run leaves them: not to resume
    argv = [sys.executable, "-c", REPLICAS_SCRIPT, "--stats-only", "--corpus", corpus_dir, "--output", out,
            "--dim", str(args.dim), "--kernel", "tf", "--strategy", "mirrored", "--batch-size", "65536",
            "--max-steps", "3"]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0 or "STATS " not in done.stdout:
        sys.exit(f"{' '.join(argv[3:])} failed with exit code {done.returncode}:\n{done.stderr[-3000:]}")
    stats = json.loads(done.stdout.split("STATS ", 1)[1].splitlines()[0])
    return stats["bytes_exchanged_per_word"]


def worker_bytes(corpus_dir, args, work, label):
    """The fused workers' (bytes exchanged, bytes an exchange of changed rows only would
    have sent) per trained word: 2 workers, 1 thread each, one epoch of `corpus_dir`, measured."""
    out = os.path.join(work, f"embeddings-worker-bytes-{label}")
    shutil.rmtree(out + ".checkpoints", ignore_errors=True)
    argv = [sys.executable, "-c", WORKER_STATS_SCRIPT, "--corpus", corpus_dir, "--output", out, "--dim",
            str(args.dim), "--epochs", "1", "--kernel", "fused", "--strategy", "multiworker"]
    log = os.path.join(work, f"worker-bytes-{label}")
    run_workers(argv, 1, log)
    with open(f"{log}-0.log", encoding="utf-8") as f:
        stats = json.loads(f.read().split("STATS ", 1)[1].splitlines()[0])
    return stats["bytes_exchanged_per_word"], stats["touched_rows_bytes_per_word"]


def bytes_rows(args, corpus_dir, results, work):
    """Bytes per trained word, before and now, at the real and the synthetic vocabulary.

    The real vocabulary is the training corpus's, or --bytes-corpus's (e.g. all of
    enwiki-AA when the rows trained on fewer files); the tf kernel's replicas are then
    measured over a few steps of it, and the fused workers over an epoch of it.
    """
    from trainer import exchange  # pylint: disable=import-outside-toplevel

    synthetic = synthetic_corpus(work, args.synthetic_vocab)
    real = args.bytes_corpus or corpus_dir
    if real != corpus_dir:
        results = {}  # the rows' measured bytes are of another vocabulary
    rows = []
    for label, directory in (("real", real), ("synthetic", synthetic)):
        per_token, vocab = words_per_token(directory)
        # Before: each of 2 replicas all-reduced both dense tables every 1,024-token step.
        before = 2 * exchange.dense_table_bytes(vocab, args.dim) / (1024 * per_token)
        if label == "real" and "replicas" in results:
            now = results["replicas"][0]["bytes_exchanged_per_word"]
        else:
            now = replica_bytes_per_word(directory, args, os.path.join(work, f"embeddings-bytes-{label}"))
        rows.append([f"tf kernel, 2 replicas ({label})", f"{vocab:,}", f"{before:,.0f}", f"{now:,.0f}",
                     f"{now * per_token:,.0f}"])
        # The fused workers (before: the tf kernel's dense tables, as above): a round of
        # exchanges every --sync-every-words words a worker (its default), measured over
        # an epoch; and what exchanging only the rows each worker changed would have sent.
        fused, touched = worker_bytes(directory, args, work, label)
        rows.append([f"fused kernel, 2 workers ({label})", f"{vocab:,}", f"{before:,.0f}", f"{fused:,.0f}",
                     f"{fused * per_token:,.0f}"])
        rows.append([f"fused kernel, 2 workers, changed rows only (not used) ({label})", f"{vocab:,}",
                     f"{before:,.0f}", f"{touched:,.0f}", f"{touched * per_token:,.0f}"])
    return rows


def median_run(runs):
    """The (training, scores) of the run of median words/s (the lower middle of an even count)."""
    return sorted(runs, key=lambda run: run[0]["words_per_second"])[(len(runs) - 1) // 2]


def score_cell(values):
    """One score, or the mean +- standard deviation of several (one per seed)."""
    import numpy as np  # pylint: disable=import-outside-toplevel

    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} +- {np.std(values):.3f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=SHARED_DATA)
    parser.add_argument("--files", type=int, default=100, help="the first N files of enwiki-AA")
    parser.add_argument("--corpus-output", default=None, help="an existing corpus job output to train on")
    parser.add_argument("--work", default=None)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--dim", type=int, default=100)
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of {', '.join(ROWS)}")
    parser.add_argument("--synthetic-vocab", type=int, default=1_000_000)
    parser.add_argument("--bytes-corpus", default=None,
                        help="a corpus job output whose vocabulary the bytes table uses (default: the trained one)")
    parser.add_argument("--seeds", default="1", help="comma-separated seeds: every row trains once per seed")
    args = parser.parse_args(argv)
    try:
        seeds = [int(seed) for seed in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds takes comma-separated integers, got {args.seeds!r}")
    work = args.work or tempfile.mkdtemp(prefix="embedflow-bench-scale-")
    os.makedirs(work, exist_ok=True)
    source = os.path.join(args.data, "corpus", "enwiki-AA")
    files = sorted(os.path.join(source, f) for f in os.listdir(source))[:args.files]
    corpus_dir = args.corpus_output or make_corpus(files, os.path.join(work, f"corpus-{args.files}"),
                                                   os.path.join(work, "corpus.log"))
    runs = {name: [train_row(name, corpus_dir, args, work, seed) for seed in seeds] for name in args.rows.split(",")}
    results = {name: median_run(row) for name, row in runs.items()}
    reference = results.get("fused", [{}])[0].get("words_per_second")
    rows = [[ROWS[name][0], f"{t['words_per_second']:,.0f}",
             f"{t['words_per_second'] / reference:.2f}" if reference else "-",
             score_cell([scores[0] for _, scores in runs[name]]), score_cell([scores[2] for _, scores in runs[name]]),
             f"{t['bytes_exchanged_per_word']:,.0f}"]
            for name, (t, _) in results.items()]
    exchanged = bytes_rows(args, corpus_dir, results, work)
    print(f"embedflow train at scale: enwiki-AA, {len(files)} files, dim {args.dim}, {args.epochs} epochs, "
          f"{os.cpu_count()} cores, CPU, seeds {args.seeds} (work: {work})")
    print_table(rows, ["configuration", "words/s", "vs reference", "analogy acc", "WordSim-353 rho",
                       "bytes exchanged / word"])
    print()
    print_table(exchanged, ["bytes exchanged", "vocabulary", "before, per word", "now, per word",
                            "now, per kept token"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
