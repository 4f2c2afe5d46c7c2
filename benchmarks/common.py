"""Helpers shared by the benchmark scripts: timing a command, printing a table, training
gensim on embedflow's tokens and scoring vectors the same way for both."""

import glob
import os
import subprocess
import sys
import threading
import time

SHARED_DATA = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))


def _tree_rss(root_pid):
    """Resident bytes of a process and all its descendants (Linux /proc)."""
    parents, rss = {}, {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat, encoding="utf-8") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            pid = int(stat.split("/")[2])
            parents[pid] = int(fields[1])
            rss[pid] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            continue
    total, todo = 0, [root_pid]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo.extend(child for child, parent in parents.items() if parent == pid)
    return total


def run_measured(argv, log_path):
    """Runs a command, sampling the memory of its whole process tree.

    Returns:
      (wall seconds, peak resident bytes summed over the process tree).
    """
    start = time.time()
    peak = [0]
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        done = threading.Event()

        def sample():
            while not done.wait(0.5):
                peak[0] = max(peak[0], _tree_rss(proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = proc.wait()
        done.set()
        sampler.join()
    wall = time.time() - start
    if code != 0:
        sys.exit(f"{' '.join(argv)} failed with exit code {code}; see {log_path}")
    return wall, peak[0]


def print_table(rows, headers):
    """Prints rows (lists of cells) as a Markdown table."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    print(line(cells[0]))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells[1:]:
        print(line(r))


def corpus_files(data, count=None):
    """The first `count` (all: None) files of enwiki-AA, sorted as the corpus job lists them."""
    root = os.path.join(data, "corpus", "enwiki-AA")
    return sorted(os.path.join(root, f) for f in os.listdir(root))[:count]


def gensim_sentences(files):
    """The paragraphs of `files` as token lists, read and tokenized as the corpus job does
    (in memory: gensim then trains on the tokens embedflow trains on)."""
    from benchmarks.corpus import corpus_token_lists  # pylint: disable=import-outside-toplevel

    return list(corpus_token_lists(files))


def train_gensim(model_class, sentences, epochs, **params):
    """Trains a gensim model (Word2Vec, FastText) on `sentences`; returns (model, seconds,
    words/s). Words/s counts in-vocabulary corpus words, times epochs, over training time,
    as embedflow's info.json does; building the vocabulary is not timed."""
    model = model_class(**params)
    model.build_vocab(sentences)
    in_vocab = sum(model.wv.get_vecattr(w, "count") for w in model.wv.index_to_key)
    start = time.time()
    model.train(sentences, total_examples=len(sentences), epochs=epochs)
    seconds = time.time() - start
    return model, seconds, in_vocab * epochs / seconds


def evaluate_vectors(vectors, data):
    """(analogy accuracy, analogy coverage, WordSim-353 Spearman, pairs covered) of WordVectors:
    questions-words over the 30k most frequent words (3CosAdd), and WordSim-353."""
    from trainer import evaluate  # pylint: disable=import-outside-toplevel

    result = evaluate.evaluate(vectors, os.path.join(data, "eval", "questions-words.txt"),
                               [os.path.join(data, "eval", "wordsim353.tsv")])
    sim = result["similarity"]["wordsim353.tsv"]
    return result["analogies"]["accuracy"], result["analogies"]["coverage"], sim["spearman"], sim["covered"]


def parse_choices(parser, flag, value, choices):
    """The comma-separated `value` of `flag` as a list, each one of `choices`, else a usage error."""
    chosen = value.split(",")
    unknown = sorted(set(chosen) - set(choices))
    if unknown:
        parser.error(f"{flag}: unknown {', '.join(unknown)}; choose from {', '.join(choices)}")
    return chosen
