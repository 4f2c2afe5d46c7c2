"""How the bundled sample corpus (sample/corpus) is cut from the Wikipedia sample.

    python -m benchmarks.sample_corpus [--data ../shared/data] [--output sample/corpus]
        [--words 5200000] [--arts-share 0.6] [--files 32]

The default run trains its vectors on the sample and then classifies the sentiment of
film reviews with them, so the sample leans towards the reviews' domain: of --words
words, up to --arts-share come from articles on films, music, books, television and the
other arts (an article counts when its opening sentences name one of ARTS_WORDS), where
critics' reception is described in the words reviews use; the rest are the other
articles, in the dump's order, which keep the general knowledge the analogy and
WordSim-353 evaluations ask for. The articles are written unchanged (WikiExtractor's
<doc> markup included), in their order in the dump, into --files gzip files of about
equal size (gzip timestamps zeroed, so the files are reproducible byte for byte).
"""

import argparse
import gzip
import os
import re
import sys

ARTS_WORDS = re.compile(
    r"\b(film|films|movie|documentary|album|albums|song|band|singer|musician|rapper|composer|novel|"
    r"novels|novelist|comic|comics|manga|anime|television series|sitcom|actor|actress|comedian|"
    r"filmmaker|screenwriter|playwright|musical|opera|video game)\b", re.IGNORECASE)
OPENING_WORDS = 60  # an article's subject is in its first sentences


def articles(paths):
    """(text of a <doc>...</doc> article, its words, whether it is on the arts) in order."""
    for path in paths:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = []
            for line in f:
                lines.append(line)
                if line.startswith("</doc>"):
                    body = lines[2:]  # past the <doc> line and the title line
                    opening = " ".join(" ".join(body).split()[:OPENING_WORDS])
                    yield "".join(lines), sum(len(x.split()) for x in body[:-1]), bool(ARTS_WORDS.search(opening))
                    lines = []


def select(paths, words, arts_share):
    """The articles of the sample, in the dump's order: arts articles up to their share of
    `words` (all of them if there are fewer), the other articles for the rest."""
    found = list(articles(paths))
    chosen, arts_words = set(), 0
    for index, (_, count, arts) in enumerate(found):
        if arts and arts_words < words * arts_share:
            chosen.add(index)
            arts_words += count
    rest = words - arts_words
    for index, (_, count, arts) in enumerate(found):
        if not arts and rest > 0:
            chosen.add(index)
            rest -= count
    return [(i, *found[i]) for i in sorted(chosen)]


def write(chosen, output, files):
    """Writes the articles into `files` gzip files of about equal words."""
    os.makedirs(output, exist_ok=True)
    total, per_file, written = sum(c for _, _, c, _ in chosen), [], 0
    shards = [[] for _ in range(files)]
    for _, text, count, _ in chosen:
        shards[min(files - 1, written * files // max(total, 1))].append(text)
        written += count
    for i, shard in enumerate(shards):
        path = os.path.join(output, f"wiki_{i:02d}.gz")
        with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as f:
            f.write("".join(shard).encode("utf-8"))
        per_file.append(path)
    return per_file


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
    parser.add_argument("--output", default="sample/corpus")
    parser.add_argument("--words", type=int, default=5_200_000)
    parser.add_argument("--arts-share", type=float, default=0.6)
    parser.add_argument("--files", type=int, default=32)
    args = parser.parse_args(argv)
    source = os.path.join(args.data, "corpus", "enwiki-AA")
    paths = sorted(os.path.join(source, f) for f in os.listdir(source) if f.endswith(".gz"))
    chosen = select(paths, args.words, args.arts_share)
    for old in os.listdir(args.output) if os.path.isdir(args.output) else []:
        if re.fullmatch(r"wiki_\d+\.gz", old):
            os.remove(os.path.join(args.output, old))
    write(chosen, args.output, args.files)
    arts = sum(c for _, _, c, a in chosen if a)
    total = sum(c for _, _, c, _ in chosen)
    print(f"{len(chosen):,} articles, {total:,} words ({arts / max(total, 1):.0%} on the arts), "
          f"{args.files} files in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
