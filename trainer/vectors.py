"""Trained word vectors: lookup, nearest neighbours, and the word2vec text format.

With subwords (fastText's, `trainer/subwords.py`) they also hold the n-gram bucket rows,
and give a vector to any word: a word outside the vocabulary gets the mean of its n-gram
rows. The vocabulary itself (`in`, `index_to_key`, `most_similar`'s answers) stays the
trained words.
"""

import io
import json

import numpy as np
from apache_beam.io.filesystems import FileSystems

from schemas import embeddings as schema
from trainer import subwords as subwords_lib


class WordVectors:
    """Word vectors with a vocabulary, in id order (most frequent first).

    Attributes:
      index_to_key: list of words; position i is row i of `vectors`.
      key_to_index: dict word -> row.
      vectors: float32 array [vocab_size, dim] (with subwords: each word's composed vector,
        the mean of its own row and its n-gram rows, as fastText exports them).
      counts: corpus counts per row, or None.
      subwords: trainer.subwords.SubwordSpec, or None without subwords.
      ngram_vectors: float32 [buckets, dim] with subwords (row b is n-gram bucket b), else None.
    """

    def __init__(self, index_to_key, vectors, counts=None, subwords=None, ngram_vectors=None):
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(index_to_key):
            raise ValueError(f"{len(index_to_key)} words but vectors of shape {vectors.shape}")
        self.index_to_key = list(index_to_key)
        self.key_to_index = {w: i for i, w in enumerate(self.index_to_key)}
        if len(self.key_to_index) != len(self.index_to_key):
            raise ValueError("the vocabulary holds a word twice")
        self.vectors = vectors
        self.counts = None if counts is None else np.asarray(counts, dtype=np.int64)
        if (subwords is None) != (ngram_vectors is None):
            raise ValueError("subwords and ngram_vectors go together: give both or neither")
        if subwords is not None:
            subwords = subwords_lib.SubwordSpec(*subwords).check()
            ngram_vectors = np.asarray(ngram_vectors, dtype=np.float32)
            if ngram_vectors.shape != (subwords.buckets, vectors.shape[1]):
                raise ValueError(f"{subwords.buckets} buckets of {vectors.shape[1]} dimensions, but "
                                 f"n-gram vectors of shape {ngram_vectors.shape}")
        self.subwords, self.ngram_vectors = subwords, ngram_vectors
        self._unit = None

    def __len__(self):
        return len(self.index_to_key)

    def __contains__(self, word):
        return word in self.key_to_index

    @property
    def dim(self):
        return self.vectors.shape[1]

    def index(self, word):
        try:
            return self.key_to_index[word]
        except KeyError:
            raise KeyError(f"word {word!r} is not in the vocabulary ({len(self)} words)") from None

    def get_vector(self, word):
        """The word's row; with subwords, for a word outside the vocabulary, the mean of its
        n-gram rows (fastText's).

        Raises:
          KeyError naming the word: it is outside the vocabulary and there are no subwords
          (or it has no n-gram).
        """
        if word in self.key_to_index or self.subwords is None:
            return self.vectors[self.index(word)]
        means, found = subwords_lib.ngram_means([word], self.subwords, self.ngram_vectors)
        if not found[0]:
            raise KeyError(f"word {word!r} is not in the vocabulary ({len(self)} words) and has no "
                           f"n-gram of {self.subwords.min_n} to {self.subwords.max_n} characters")
        return means[0]

    def __getitem__(self, word):
        return self.get_vector(word)

    def _unit_vector(self, word):
        if word in self.key_to_index:
            return self.unit_vectors[self.key_to_index[word]]
        vector = self.get_vector(word)
        return vector / max(float(np.linalg.norm(vector)), 1e-12)

    @property
    def unit_vectors(self):
        """Rows scaled to unit length (zero rows stay zero)."""
        if self._unit is None:
            norms = np.linalg.norm(self.vectors, axis=1, keepdims=True)
            self._unit = self.vectors / np.maximum(norms, 1e-12)
        return self._unit

    def similarity(self, a, b):
        return float(self._unit_vector(a) @ self._unit_vector(b))

    def most_similar(self, positive=(), negative=(), topn=10, restrict_vocab=None):
        """Words closest by cosine to the mean of `positive` minus `negative` (3CosAdd).

        Args:
          positive: a word or words to add.
          negative: words to subtract.
          topn: how many to return.
          restrict_vocab: search only the first N (most frequent) words.

        Returns:
          list of (word, cosine), best first; the query words are left out.

        Raises:
          KeyError: a query word has no vector (`get_vector`).
        """
        positive = [positive] if isinstance(positive, str) else list(positive)
        negative = [negative] if isinstance(negative, str) else list(negative)
        if not positive and not negative:
            raise ValueError("most_similar needs at least one word")
        unit = self.unit_vectors
        query = np.zeros(self.dim, dtype=np.float32)
        for w in positive:
            query += self._unit_vector(w)
        for w in negative:
            query -= self._unit_vector(w)
        query /= max(np.linalg.norm(query), 1e-12)
        limit = len(self) if restrict_vocab is None else min(restrict_vocab, len(self))
        scores = unit[:limit] @ query
        exclude = {self.key_to_index[w] for w in positive + negative if w in self.key_to_index}
        k = min(topn + len(exclude), limit)
        best = np.argpartition(-scores, k - 1)[:k] if k < limit else np.arange(limit)
        best = best[np.argsort(-scores[best])]
        return [(self.index_to_key[i], float(scores[i])) for i in best if i not in exclude][:topn]

    # ---------------------------------------------------------------- formats

    def save_word2vec_format(self, path):
        """Writes the word2vec text format: a "count dim" header, then "word v1 v2 ..." lines."""
        buf = io.StringIO()
        buf.write(f"{len(self)} {self.dim}\n")
        for word, row in zip(self.index_to_key, self.vectors):
            buf.write(word + " " + " ".join(f"{x:.6g}" for x in row) + "\n")
        with FileSystems.create(path) as f:
            f.write(buf.getvalue().encode("utf-8"))

    @classmethod
    def load_word2vec_format(cls, path):
        with FileSystems.open(path) as f:
            lines = f.read().decode("utf-8").splitlines()
        try:
            count, dim = (int(x) for x in lines[0].split())
        except (IndexError, ValueError):
            raise ValueError(f"{path}: not word2vec text format (first line must be 'count dim')") from None
        words, rows = [], np.zeros((count, dim), dtype=np.float32)
        for i, line in enumerate(lines[1:count + 1]):
            parts = line.rstrip().split(" ")
            if len(parts) != dim + 1:
                raise ValueError(f"{path}:{i + 2}: expected a word and {dim} numbers")
            words.append(parts[0])
            rows[i] = np.asarray(parts[1:], dtype=np.float32)
        if len(words) != count:
            raise ValueError(f"{path}: header says {count} words, file holds {len(words)}")
        return cls(words, rows)

    def save(self, directory):
        """Writes vectors.npy and vocab.txt ("word<TAB>count" lines) into `directory`; with
        subwords also subword_vectors.npy and subwords.json (the n-gram rule)."""
        _save_npy(FileSystems.join(directory, schema.VECTORS_NPY), self.vectors)
        counts = self.counts if self.counts is not None else np.zeros(len(self), dtype=np.int64)
        text = "".join(f"{w}\t{c}\n" for w, c in zip(self.index_to_key, counts))
        with FileSystems.create(FileSystems.join(directory, schema.VOCAB_TXT)) as f:
            f.write(text.encode("utf-8"))
        if self.subwords is not None:
            _save_npy(FileSystems.join(directory, schema.SUBWORD_VECTORS_NPY), self.ngram_vectors)
            with FileSystems.create(FileSystems.join(directory, schema.SUBWORDS_JSON)) as f:
                f.write(json.dumps(self.subwords.as_dict()).encode("utf-8"))

    @classmethod
    def load(cls, directory):
        """Reads what `save` wrote (an embeddings output directory), subwords included."""
        vectors = _load_npy(FileSystems.join(directory, schema.VECTORS_NPY))
        with FileSystems.open(FileSystems.join(directory, schema.VOCAB_TXT)) as f:
            rows = [line.split("\t") for line in f.read().decode("utf-8").splitlines()]
        spec = ngram_vectors = None
        spec_path = FileSystems.join(directory, schema.SUBWORDS_JSON)
        if FileSystems.exists(spec_path):
            with FileSystems.open(spec_path) as f:
                spec = subwords_lib.SubwordSpec(**json.loads(f.read().decode("utf-8")))
            ngram_vectors = _load_npy(FileSystems.join(directory, schema.SUBWORD_VECTORS_NPY))
        return cls([r[0] for r in rows], vectors, [int(r[1]) for r in rows], spec, ngram_vectors)


def _save_npy(path, array):
    buf = io.BytesIO()
    np.save(buf, array)
    with FileSystems.create(path) as f:
        f.write(buf.getvalue())


def _load_npy(path):
    with FileSystems.open(path) as f:
        return np.load(io.BytesIO(f.read()))
