"""Word-vector files of other tools: word2vec text and binary, GloVe, fastText `.vec`.

    word2vec          "COUNT DIM" header line, then one "word v1 ... vDIM" line a word
                      (gensim's save_word2vec_format, word2vec's -binary 0)
    word2vec-binary   the same header, then per word: the word, one space, DIM
                      little-endian float32 (word2vec's -binary 1 ends each vector with
                      "\\n", gensim's binary writer does not: both are read)
    glove             no header; "word v1 ... vDIM" lines, DIM taken from the first line
    fasttext-vec      as word2vec text (fastText ends every line with a space)

Fields are separated by single spaces (words may hold any other byte, tabs and
non-breaking spaces included); trailing spaces and CR LF line ends are accepted.
Files are read streaming, gunzipped when their content is gzip (`core.files.open_binary`),
locally or from `gs://`.

`VectorReader` checks as it reads and raises a ValueError that names the file and the
line ("PATH:LINE: ..."): a header that is not "COUNT DIM" or disagrees with the rows
that follow, a row of the wrong width, a value that is not a number, NaN or an infinite
value (or one too large for float32), a word that appears twice, a file with no vector,
an empty line between rows. In a binary file, "line N" is the (N-1)-th vector, the line
word2vec's own writer puts it on, and the message adds its byte offset. A word whose
bytes are not UTF-8 is not an error: it is yielded with `word=None` for the caller to
count and leave out.
"""

import dataclasses

import numpy as np
from apache_beam.io.filesystems import FileSystems

from core import files

FORMATS = ("word2vec", "word2vec-binary", "glove", "fasttext-vec")
HAS_HEADER = {"word2vec": True, "word2vec-binary": True, "glove": False, "fasttext-vec": True}
# word2vec and fastText write their end-of-sentence token as the first (most frequent) word.
END_OF_SENTENCE = "</s>"
_LONGEST_WORD = 10_000  # bytes; a binary "word" longer than this means a wrong DIM
_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class Row:
    """One vector of a file: its line, its word (None when not UTF-8), its values."""

    line: int
    word: str | None
    raw_word: bytes
    vector: np.ndarray  # float32 [dim]


class VectorReader:
    """Reads one file of `fmt`, row by row, checking every row (see the module docstring).

    Use as a context manager; `dim` and `declared_count` (None without a header) are
    known once it is open; iterate for `Row`s. The header's count is compared with the
    rows when the iteration reaches the end of the file (a reader stopped earlier has
    not checked the rows it did not read).
    """

    def __init__(self, path, fmt):
        if fmt not in FORMATS:
            raise ValueError(f"unknown vectors format {fmt!r}: one of {', '.join(FORMATS)}")
        self.path, self.fmt = path, fmt
        self.dim = self.declared_count = None
        self._file = None
        self._first_line = {}  # raw word -> line, to find duplicates
        self._pending = None  # GloVe: the first row, read to learn DIM
        self._header_like = False  # GloVe: the first row is two integers, a 'COUNT DIM' header?

    def __enter__(self):
        self._file = files.open_binary(self.path)
        try:
            self._start()
        except BaseException:
            self._file.close()
            raise
        return self

    def __exit__(self, *exc):
        self._file.close()
        return False

    def error(self, line, what, offset=None):
        where = f"{self.path}:{line}" + (f" (byte {offset:,})" if offset is not None else "")
        return ValueError(f"{where}: {what}")

    # ------------------------------------------------------------------ header

    def _start(self):
        if self.fmt == "word2vec-binary":
            self._buf, self._pos, self._base = b"", 0, 0
            header = self._binary_line()
        elif HAS_HEADER[self.fmt]:
            header = self._file.readline()
        else:
            self._lines = self._text_lines(start=1)
            self._pending = next(self._lines, None)
            if self._pending is None:
                raise ValueError(f"{self.path}: the file is empty: it holds no vector")
            lineno, parts = self._pending
            if len(parts) < 2:
                raise self.error(lineno, f"expected a word and its numbers, got {_shown(b' '.join(parts))}")
            self.dim = len(parts) - 1
            self._header_like = len(parts) == 2 and all(p.isdigit() for p in parts)
            return
        if not header.strip():
            raise ValueError(f"{self.path}: the file is empty: it holds no vector"
                             if not header else f"{self.path}:1: expected a 'COUNT DIM' header, got an empty line")
        fields = header.split()
        try:
            count, dim = (int(x) for x in fields)
        except ValueError:
            hint = (" (GloVe files have no header: use --format glove)"
                    if len(fields) > 2 and self.fmt != "word2vec-binary" else "")
            raise self.error(1, f"expected a 'COUNT DIM' header, got {_shown(header.strip())}{hint}") from None
        if count < 1 or dim < 1:
            raise self.error(1, f"the header says {count} vectors of {dim} dimensions: "
                                "the file holds no vector")
        self.declared_count, self.dim = count, dim
        if self.fmt != "word2vec-binary":
            self._lines = self._text_lines(start=2)

    # ------------------------------------------------------------------ rows

    def __iter__(self):
        if self.fmt == "word2vec-binary":
            yield from self._binary_rows()
            return
        read = 0
        if self._pending is not None:
            pending, self._pending = self._pending, None
            yield self._text_row(*pending)
            read += 1
        for lineno, parts in self._lines:
            if self.declared_count is not None and read == self.declared_count:
                raise self.error(lineno, f"the header says {self.declared_count:,} vectors, but more "
                                         "rows follow")
            yield self._text_row(lineno, parts)
            read += 1
        if self.declared_count is not None and read < self.declared_count:
            raise ValueError(f"{self.path}:{read + 2}: the header says {self.declared_count:,} vectors, "
                             f"but the file ends after {read:,}")

    def _text_lines(self, start):
        """(line number, fields) of the non-blank lines; a blank line before a row is an error."""
        blank = None
        for lineno, raw in enumerate(iter(self._file.readline, b""), start=start):
            line = raw.rstrip(b"\r\n").rstrip(b" ")
            if not line:
                blank = blank or lineno
                continue
            if blank is not None:
                raise self.error(blank, "an empty line between rows")
            yield lineno, line.split(b" ")

    def _text_row(self, lineno, parts):
        if len(parts) != self.dim + 1:
            hint = ""
            if self.fmt == "glove" and self._header_like:
                hint = " (the first line looks like a 'COUNT DIM' header: use --format word2vec)"
            raise self.error(lineno, f"expected a word and {self.dim} numbers, got {len(parts) - 1} "
                                     f"fields after the word {_shown(parts[0])}{hint}")
        if not parts[0]:
            raise self.error(lineno, "the line starts with a space: no word")
        return self._row(lineno, parts[0], _parse_numbers(parts[1:], lambda what: self.error(lineno, what)))

    def _row(self, lineno, raw_word, vector, offset=None):
        if not np.isfinite(vector).all():
            column = int(np.flatnonzero(~np.isfinite(vector))[0]) + 1
            raise self.error(lineno, f"value {column} of {_shown(raw_word)} is {vector[column - 1]} "
                                     "(NaN, infinite, or too large for float32)", offset)
        first = self._first_line.setdefault(raw_word, lineno)
        if first != lineno:
            raise self.error(lineno, f"the word {_shown(raw_word)} appears again (first on line {first})",
                             offset)
        try:
            word = raw_word.decode("utf-8")
        except UnicodeDecodeError:
            word = None
        return Row(lineno, word, raw_word, vector)

    # ------------------------------------------------------------------ binary

    def _fill(self, need):
        """True once `need` bytes are buffered from the current position (False at the end)."""
        while len(self._buf) - self._pos < need:
            chunk = self._file.read(_CHUNK)
            if not chunk:
                return False
            self._base += self._pos
            self._buf, self._pos = self._buf[self._pos:] + chunk, 0
        return True

    def _binary_line(self):
        line = b""
        while True:
            self._fill(1)
            end = self._buf.find(b"\n", self._pos)
            if end >= 0:
                line += self._buf[self._pos:end + 1]
                self._pos = end + 1
                return line
            line += self._buf[self._pos:]
            self._pos = len(self._buf)
            if not self._fill(1) or len(line) > _LONGEST_WORD:
                return line

    def _skip_newlines(self):
        while self._fill(1) and self._buf[self._pos:self._pos + 1] in (b"\n", b"\r"):
            self._pos += 1

    def _binary_rows(self):
        width = 4 * self.dim
        for index in range(self.declared_count):
            lineno = index + 2
            self._skip_newlines()
            offset = self._base + self._pos
            if not self._fill(1):
                raise self.error(lineno, f"the header says {self.declared_count:,} vectors, but the "
                                         f"file ends after {index:,}", offset)
            while True:
                end = self._buf.find(b" ", self._pos, self._pos + _LONGEST_WORD + 1)
                if end >= 0 or len(self._buf) - self._pos > _LONGEST_WORD or not self._fill(
                        len(self._buf) - self._pos + 1):
                    break
            if end < 0:
                raise self.error(lineno, f"no word (bytes up to a space) starts here: is the header's "
                                         f"DIM {self.dim} right, and is the file word2vec binary?", offset)
            raw_word = self._buf[self._pos:end]
            self._pos = end + 1
            if not raw_word:
                raise self.error(lineno, "an empty word", offset)
            if not self._fill(width):
                raise self.error(lineno, f"the file ends inside the vector of {_shown(raw_word)}: the "
                                         f"header says {self.declared_count:,} vectors of {self.dim} "
                                         "dimensions", offset)
            vector = np.frombuffer(self._buf, dtype="<f4", count=self.dim, offset=self._pos).astype(np.float32)
            self._pos += width
            yield self._row(lineno, raw_word, vector, offset)
        self._skip_newlines()
        if self._fill(1):
            raise self.error(self.declared_count + 2, f"the header says {self.declared_count:,} "
                                                     "vectors, but more data follows",
                             self._base + self._pos)


def _parse_numbers(fields, error):
    try:
        with np.errstate(over="ignore"):
            return np.array(fields, dtype=np.float32)
    except ValueError:
        for column, field in enumerate(fields, start=1):
            try:
                float(field)
            except ValueError:
                if not field:
                    raise error(f"value {column} is empty (two spaces in a row)") from None
                raise error(f"value {column} is not a number: {_shown(field)}") from None
        raise


def _shown(raw):
    """A short, printable rendering of file bytes for messages."""
    text = raw.decode("utf-8", "backslashreplace") if isinstance(raw, bytes) else str(raw)
    return repr(text if len(text) <= 60 else text[:57] + "...")


def write_vectors(path, words, vectors, fmt):
    """Writes `words` and their rows (float32 [n, dim]) in `fmt` (gzipped when `path` ends in .gz)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown vectors format {fmt!r}: one of {', '.join(FORMATS)}")
    vectors = np.asarray(vectors, dtype=np.float32)
    chunks = [f"{len(words)} {vectors.shape[1]}\n".encode()] if HAS_HEADER[fmt] else []
    for word, row in zip(words, vectors):
        if fmt == "word2vec-binary":
            chunks.append(word.encode("utf-8") + b" " + row.astype("<f4").tobytes() + b"\n")
        else:
            tail = " " if fmt == "fasttext-vec" else ""
            chunks.append((word + " " + " ".join(f"{x:.8g}" for x in row) + tail + "\n").encode("utf-8"))
    with FileSystems.create(path) as f:
        f.write(b"".join(chunks))
