"""Trained word vectors: lookup, nearest neighbours, and the word2vec text format."""

import io

import numpy as np
from apache_beam.io.filesystems import FileSystems

from schemas import embeddings as schema


class WordVectors:
    """Word vectors with a vocabulary, in id order (most frequent first).

    Attributes:
      index_to_key: list of words; position i is row i of `vectors`.
      key_to_index: dict word -> row.
      vectors: float32 array [vocab_size, dim].
      counts: corpus counts per row, or None.
    """

    def __init__(self, index_to_key, vectors, counts=None):
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(index_to_key):
            raise ValueError(f"{len(index_to_key)} words but vectors of shape {vectors.shape}")
        self.index_to_key = list(index_to_key)
        self.key_to_index = {w: i for i, w in enumerate(self.index_to_key)}
        if len(self.key_to_index) != len(self.index_to_key):
            raise ValueError("the vocabulary holds a word twice")
        self.vectors = vectors
        self.counts = None if counts is None else np.asarray(counts, dtype=np.int64)
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

    def __getitem__(self, word):
        return self.vectors[self.index(word)]

    @property
    def unit_vectors(self):
        """Rows scaled to unit length (zero rows stay zero)."""
        if self._unit is None:
            norms = np.linalg.norm(self.vectors, axis=1, keepdims=True)
            self._unit = self.vectors / np.maximum(norms, 1e-12)
        return self._unit

    def similarity(self, a, b):
        return float(self.unit_vectors[self.index(a)] @ self.unit_vectors[self.index(b)])

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
          KeyError: a query word is not in the vocabulary.
        """
        positive = [positive] if isinstance(positive, str) else list(positive)
        negative = [negative] if isinstance(negative, str) else list(negative)
        if not positive and not negative:
            raise ValueError("most_similar needs at least one word")
        unit = self.unit_vectors
        query = np.zeros(self.dim, dtype=np.float32)
        for w in positive:
            query += unit[self.index(w)]
        for w in negative:
            query -= unit[self.index(w)]
        query /= max(np.linalg.norm(query), 1e-12)
        limit = len(self) if restrict_vocab is None else min(restrict_vocab, len(self))
        scores = unit[:limit] @ query
        exclude = {self.key_to_index[w] for w in positive + negative}
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
        """Writes vectors.npy and vocab.txt ("word<TAB>count" lines) into `directory`."""
        buf = io.BytesIO()
        np.save(buf, self.vectors)
        with FileSystems.create(FileSystems.join(directory, schema.VECTORS_NPY)) as f:
            f.write(buf.getvalue())
        counts = self.counts if self.counts is not None else np.zeros(len(self), dtype=np.int64)
        text = "".join(f"{w}\t{c}\n" for w, c in zip(self.index_to_key, counts))
        with FileSystems.create(FileSystems.join(directory, schema.VOCAB_TXT)) as f:
            f.write(text.encode("utf-8"))

    @classmethod
    def load(cls, directory):
        """Reads what `save` wrote (an embeddings output directory)."""
        with FileSystems.open(FileSystems.join(directory, schema.VECTORS_NPY)) as f:
            vectors = np.load(io.BytesIO(f.read()))
        with FileSystems.open(FileSystems.join(directory, schema.VOCAB_TXT)) as f:
            rows = [line.split("\t") for line in f.read().decode("utf-8").splitlines()]
        return cls([r[0] for r in rows], vectors, [int(r[1]) for r in rows])
