"""Benchmark of the corpus job on the English Wikipedia sample, checked against gensim.

    python -m benchmarks.corpus [--data DIR] [--work DIR] [--modes in_process,multi_processing]

Runs `embedflow corpus` (DirectRunner) on ../shared/data/corpus/enwiki-AA (about 16M
words) and prints wall time, peak memory of the process tree, tokens per second,
vocabulary size at min-count 5 and bytes on disk per window and per training pair.
Then it checks the vocabulary against an independent implementation: the same
paragraphs, tokenized by the same tokenizer graph, are fed to gensim's
`Word2Vec.build_vocab(min_count=5)`, whose words and counts must equal vocab.tsv.
"""

import argparse
import json
import os
import sys
import tempfile
import time

from benchmarks.common import SHARED_DATA, print_table, run_measured

MODES = {
    "in_process": [],
    "multi_processing": ["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
}


def corpus_token_lists(files, batch=2000):
    """Yields the token list of every paragraph, read and tokenized as the corpus job does."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from pipelines import corpus  # pylint: disable=import-outside-toplevel
    from pipelines.tokenize import tokenize  # pylint: disable=import-outside-toplevel

    tokenize_fn = tf.function(tokenize)
    reader = corpus._ReadDecodeLines("auto", 10_000_000)  # pylint: disable=protected-access
    reader.setup()
    pending = []
    for path in files:
        for paragraph in reader.process((path, 0, None)):
            pending.append(paragraph)
            if len(pending) == batch:
                yield from _tokens(tokenize_fn, pending)
                pending = []
    if pending:
        yield from _tokens(tokenize_fn, pending)


def _tokens(tokenize_fn, paragraphs):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    rows = tokenize_fn(tf.constant(paragraphs)).to_list()
    return [[t.decode("utf-8") for t in row] for row in rows]


class _Reiterable:
    def __init__(self, make):
        self._make = make

    def __iter__(self):
        return self._make()


def gensim_check(files, vocab_path, min_count):
    """Compares vocab.tsv with gensim's build_vocab on the same token lists."""
    from gensim.models import Word2Vec  # pylint: disable=import-outside-toplevel

    start = time.time()
    model = Word2Vec(min_count=min_count, sg=1, workers=1)
    model.build_vocab(corpus_iterable=_Reiterable(lambda: corpus_token_lists(files)))
    theirs = {w: model.wv.get_vecattr(w, "count") for w in model.wv.index_to_key}
    with open(vocab_path, encoding="utf-8") as f:
        ours = {t: int(c) for t, c in (line.rstrip("\n").split("\t") for line in f)}
    missing = sorted(set(theirs) - set(ours))
    extra = sorted(set(ours) - set(theirs))
    differ = sorted(w for w in set(ours) & set(theirs) if ours[w] != theirs[w])
    return {"gensim_words": len(theirs), "embedflow_words": len(ours), "only_gensim": missing[:10],
            "only_embedflow": extra[:10], "count_mismatches": len(differ),
            "examples": [(w, ours[w], theirs[w]) for w in differ[:10]],
            "seconds": round(time.time() - start, 1)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.path.join(SHARED_DATA, "corpus", "enwiki-AA"))
    parser.add_argument("--work", default=None, help="where outputs go (default: a temp dir)")
    parser.add_argument("--modes", default="in_process,multi_processing")
    parser.add_argument("--min-count", type=int, default=5)
    parser.add_argument("--skip-gensim", action="store_true")
    args = parser.parse_args(argv)
    work = args.work or tempfile.mkdtemp(prefix="embedflow-bench-corpus-")
    os.makedirs(work, exist_ok=True)
    files = sorted(os.path.join(args.data, f) for f in os.listdir(args.data))

    rows, last_out = [], None
    for mode in args.modes.split(","):
        out = os.path.join(work, mode)
        argv_ = [sys.executable, "-m", "jobs.corpus", "--input", os.path.join(args.data, "*"),
                 "--output", out, "--min-count", str(args.min_count), *MODES[mode]]
        wall, peak = run_measured(argv_, os.path.join(work, f"{mode}.log"))
        with open(os.path.join(out, "info.json"), encoding="utf-8") as f:
            info = json.load(f)
        w = info["windows"]
        rows.append([mode, f"{wall:.0f}", f"{peak / 2**30:.2f}", f"{info['counts']['tokens']:,}",
                     f"{info['counts']['tokens'] / wall:,.0f}", f"{info['vocab_size']:,}",
                     f"{w['bytes'] / 2**20:.1f}", f"{w['bytes_per_window']:.2f}",
                     f"{w['bytes_per_pair_dynamic_window']:.3f}", f"{w['bytes_per_pair_full_window']:.3f}"])
        last_out = out
    print(f"corpus job on {args.data} ({len(files)} files), {os.cpu_count()} cores, DirectRunner")
    print_table(rows, ["mode", "wall s", "peak GiB", "tokens", "tokens/s", f"vocab (min {args.min_count})",
                       "windows MiB", "B/window", "B/pair (dyn. window)", "B/pair (full window)"])
    if not args.skip_gensim:
        check = gensim_check(files, os.path.join(last_out, "vocab.tsv"), args.min_count)
        same = not check["only_gensim"] and not check["only_embedflow"] and not check["count_mismatches"]
        print()
        print_table([[check["embedflow_words"], check["gensim_words"], len(check["only_embedflow"]),
                      len(check["only_gensim"]), check["count_mismatches"], "yes" if same else "NO"]],
                    ["embedflow words", "gensim words", "only embedflow", "only gensim",
                     "count mismatches", "identical"])
        if not same:
            print(json.dumps(check, indent=1))
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
