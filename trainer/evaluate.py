"""Evaluation of word vectors: analogies, word similarity, nearest neighbours.

    embedflow evaluate --embeddings DIR [--analogies FILE] [--similarity FILE ...] [--json]
    embedflow neighbors --embeddings DIR [--topn 10] [--json] WORD [WORD ...]

Analogies (questions-words format, ": section" headers, "a b c d" lines): 3CosAdd over
unit vectors, answer = argmax cos(x, b - a + c) over the most frequent
`--restrict-vocab` words (30,000, as word2vec's compute-accuracy), the three question
words excluded. Questions with a word outside those words are skipped and reported
as lost coverage. Word similarity (WordSim-353 format: word, word, score separated by
tabs or spaces; "#" lines are comments): Spearman's rank correlation between human
scores and cosines, over the pairs whose words are both in the vocabulary.
"""

import os

import numpy as np
from apache_beam.io.filesystems import FileSystems

from core import outputs
from trainer.vectors import WordVectors

PRODUCER = "embedflow train --corpus DIR --output DIR"


def _read_lines(path, flag):
    if not FileSystems.exists(path):
        raise FileNotFoundError(f"{flag} {path} does not exist")
    with FileSystems.open(path) as f:
        return f.read().decode("utf-8", errors="replace").splitlines()


def read_analogies(path):
    """Returns [(section, (a, b, c, d))], words lower-cased."""
    section, questions = "", []
    for n, line in enumerate(_read_lines(path, "--analogies"), 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith(":"):
            section = line[1:].strip()
            continue
        words = line.lower().split()
        if len(words) != 4:
            raise ValueError(f"--analogies {path}:{n}: expected 4 words, got {len(words)}")
        questions.append((section, tuple(words)))
    if not questions:
        raise ValueError(f"--analogies {path} holds no question")
    return questions


def read_similarity(path):
    """Returns [(word, word, score)], words lower-cased."""
    pairs = []
    for n, line in enumerate(_read_lines(path, "--similarity"), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.replace("\t", " ").split()
        try:
            pairs.append((parts[0].lower(), parts[1].lower(), float(parts[2])))
        except (IndexError, ValueError):
            if n == 1:  # a header line such as "Word 1  Word 2  Human (mean)"
                continue
            raise ValueError(f"--similarity {path}:{n}: expected 'word word score'") from None
    if not pairs:
        raise ValueError(f"--similarity {path} holds no pair")
    return pairs


def analogy_accuracy(vectors, questions, restrict_vocab=30000, batch=512):
    """3CosAdd analogy accuracy, per section and overall, with coverage."""
    limit = min(restrict_vocab, len(vectors))
    unit = vectors.unit_vectors[:limit]
    index = {w: i for i, w in enumerate(vectors.index_to_key[:limit])}
    sections = {}
    usable = []
    for section, words in questions:
        stats = sections.setdefault(section, {"correct": 0, "total": 0, "questions": 0})
        stats["questions"] += 1
        if all(w in index for w in words):
            usable.append((section, [index[w] for w in words]))
    for start in range(0, len(usable), batch):
        chunk = usable[start:start + batch]
        ids = np.array([q for _, q in chunk])
        query = unit[ids[:, 1]] - unit[ids[:, 0]] + unit[ids[:, 2]]
        scores = query @ unit.T
        rows = np.arange(len(chunk))[:, None]
        scores[rows, ids[:, :3]] = -np.inf
        predicted = scores.argmax(axis=1)
        for (section, q), p in zip(chunk, predicted):
            sections[section]["total"] += 1
            sections[section]["correct"] += int(p == q[3])
    for stats in sections.values():
        stats["accuracy"] = stats["correct"] / stats["total"] if stats["total"] else None
    correct = sum(s["correct"] for s in sections.values())
    total = sum(s["total"] for s in sections.values())
    return {"accuracy": correct / total if total else 0.0, "correct": correct, "answered": total,
            "questions": len(questions), "coverage": total / len(questions),
            "restrict_vocab": limit, "sections": sections}


def _ranks(x):
    """Ranks with ties averaged (1-based), as Spearman's correlation needs."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = np.asarray(x)[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(a, b):
    ra, rb = _ranks(np.asarray(a, dtype=np.float64)), _ranks(np.asarray(b, dtype=np.float64))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = np.sqrt((ra ** 2).sum() * (rb ** 2).sum())
    return float((ra * rb).sum() / denominator) if denominator else 0.0


def similarity_spearman(vectors, pairs):
    covered = [(a, b, s) for a, b, s in pairs if a in vectors and b in vectors]
    if len(covered) < 2:
        return {"spearman": None, "pairs": len(pairs), "covered": len(covered)}
    human = [s for _, _, s in covered]
    model = [vectors.similarity(a, b) for a, b, _ in covered]
    return {"spearman": spearman(human, model), "pairs": len(pairs), "covered": len(covered),
            "coverage": len(covered) / len(pairs)}


def load_embeddings(directory):
    outputs.require_completed(directory, "--embeddings", PRODUCER)
    return WordVectors.load(directory)


def evaluate(vectors, analogies=None, similarity=(), restrict_vocab=30000):
    result = {}
    if analogies:
        result["analogies"] = analogy_accuracy(vectors, read_analogies(analogies), restrict_vocab)
        result["analogies"]["file"] = analogies
    for path in similarity:
        result.setdefault("similarity", {})[os.path.basename(path)] = dict(
            similarity_spearman(vectors, read_similarity(path)), file=path)
    return result




# Analogy sections whose word pairs show structure in a 2D projection, as in the
# word2vec papers: the offset from a country to its capital, from a man to a woman.
# group -> (sections, whether the section writes a pair second word first: questions-words
# has "athens greece baghdad iraq", capital before country).
PAIR_GROUPS = {"country-capital": (("capital-common-countries",), True),
               "male-female": (("family",), False)}


def analogy_pairs(questions, vectors, per_group=10, restrict_vocab=30000):
    """{group: [(a, b), ...]}: distinct word pairs of the PAIR_GROUPS sections, both words
    among the `restrict_vocab` most frequent, most frequent pairs first."""
    rank = {w: i for i, w in enumerate(vectors.index_to_key[:restrict_vocab])}
    groups = {}
    for group, (sections, reverse) in PAIR_GROUPS.items():
        seen = set()
        for section, (a, b, c, d) in questions:
            if section in sections:
                pairs = ((b, a), (d, c)) if reverse else ((a, b), (c, d))
                seen.update(p for p in pairs if p[0] in rank and p[1] in rank)
        pairs = sorted(seen, key=lambda p: (max(rank[p[0]], rank[p[1]]), p))
        # A word in two pairs (he-she, he-his) would draw a star: keep its first pair.
        kept, used = [], set()
        for a, b in pairs:
            if a not in used and b not in used:
                kept.append((a, b))
                used.update((a, b))
        if kept:
            groups[group] = kept[:per_group]
    return groups


def project_pairs(vectors, groups):
    """Each group's words on the first two principal components of their unit vectors.

    Returns:
      {group: {"pairs": [[a, b]], "xy": {word: [x, y]}, "explained_variance": [v1, v2]}}.
    """
    projected = {}
    for group, pairs in groups.items():
        words = [w for pair in pairs for w in pair]
        rows = np.stack([vectors.unit_vectors[vectors.index(w)] for w in words])
        centred = rows - rows.mean(axis=0, keepdims=True)
        _, s, vt = np.linalg.svd(centred, full_matrices=False)
        xy = centred @ vt[:2].T
        explained = (s[:2] ** 2 / max(float((s ** 2).sum()), 1e-12)).tolist()
        projected[group] = {"pairs": [list(p) for p in pairs],
                            "xy": {w: [round(float(x), 5), round(float(y), 5)] for w, (x, y) in zip(words, xy)},
                            "explained_variance": explained}
    return projected
