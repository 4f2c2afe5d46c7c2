"""Beam transforms of the sentiment job: read labelled text, tokenize it (PTransforms).

The job that runs them, its flags and its output contract: `jobs/sentiment.py`.

Inputs (`--input` and `--eval-input`: a file, a glob or a folder; repeatable; local or
gs://; gzip is recognised by content). Classes are `--labels`, in class-index order
(default `neg,pos`); a label cell names a class (case-insensitive) or gives its index.

- tsv, csv: one example a row; the label and the text are the columns named by
  `--label-column` and `--text-column` (default `label` and `text`; a number is a
  0-based column index). The first row of each file is a header when it holds the
  named columns, or, for index columns, when its label cell is not a label; a named
  column absent from the first row is an error naming the file. TSV fields are not
  quoted (a `"` is text); CSV follows RFC 4180 quoting. Rows with fewer cells than the
  columns need are counted skips (`skipped_malformed`).
- polarity: the sentence polarity dataset: files ending in `.pos` or `.neg`
  (`rt-polarity.pos`, `rt-polarity.neg`), one text a line, Latin-1; the suffix is the
  label. A folder stands for its `*.pos` and `*.neg` files.
- folders: a folder holding one subfolder per label (named as in `--labels`), one
  example per file (the whole file is the text). A subfolder that is not a label is an
  error.

Text is decoded with `--encoding` (default: latin-1 for polarity, utf-8 otherwise).
Counted skips (`counts` in info.json): texts that do not decode (`skipped_undecodable`,
a line for tsv/csv/polarity, a file for folders), empty or blank texts
(`skipped_empty`), texts in which the tokenizer finds no token (`skipped_no_tokens`),
labels that are not in `--labels` (`skipped_unknown_label`). A path that matches
nothing, a polarity file without a `.pos`/`.neg` suffix or whose label is not in
`--labels`, and a split left empty are errors.
"""

import csv
import hashlib
import io
import os
import typing

import apache_beam as beam

from core import files, outputs, tokens
from core.files import open_binary
from pipelines import examples
from schemas import sentiment as schema

NAMESPACE = "embedflow.sentiment"
FORMATS = ("tsv", "csv", "polarity", "folders")
SKIP_REASONS = ("undecodable", "empty", "no_tokens", "unknown_label", "malformed")
POLARITY_SUFFIXES = ("pos", "neg")

_TOKENIZE_BATCH = 256  # texts per call of the transform graph


# ---------------------------------------------------------------------------- inputs


class Source(typing.NamedTuple):
    """One unit of reading: a tsv/csv/polarity file, or one file of a label folder."""
    fmt: str
    split: str  # schema.TRAIN or schema.EVAL
    path: str
    label: typing.Optional[str] = None  # polarity and folders: from the name


def polarity_label(path):
    """The label of a sentence polarity file from its suffix ('pos' or 'neg'), or None."""
    name = os.path.basename(path)
    for compressed in (".gz",):
        if name.endswith(compressed):
            name = name[:-len(compressed)]
    suffix = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return suffix if suffix in POLARITY_SUFFIXES else None


def list_sources(patterns, fmt, split, flag, labels):
    """Expands one flag's paths into Sources, checking what can be checked before work starts.

    Args:
      patterns: the flag's values (files, globs, folders).
      fmt: one of FORMATS.
      split: schema.TRAIN or schema.EVAL.
      flag: the flag's name, for messages.
      labels: the class names (`--labels`).

    Returns:
      (list of Source, list of Beam FileMetadata of the files read).

    Raises:
      FileNotFoundError: a path matches nothing.
      ValueError: a polarity file without a .pos/.neg suffix or with a label not in
        `labels`; a label folder that is not a label.
    """
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {FORMATS}, got {fmt!r}")
    if fmt == "folders":
        found = [f for pattern in patterns
                 for f in examples.list_label_folders(pattern, flag, _label_namer(labels),
                                                      _folder_layout(labels))]
        return [Source(fmt, split, m.path, label) for m, label in found], [m for m, _ in found]
    metadata = examples.unique_files(_match(pattern, fmt, flag) for pattern in patterns)
    known = {name.lower() for name in labels}
    sources = []
    for m in metadata:
        label = None
        if fmt == "polarity":
            label = polarity_label(m.path)
            if label is None:
                raise ValueError(f"{flag} {m.path}: a polarity file's name must end in .pos or "
                                 ".neg (rt-polarity.pos, rt-polarity.neg): its suffix is the label")
            if label not in known:
                raise ValueError(f"{flag} {m.path}: label {label!r} is not one of --labels "
                                 f"{','.join(labels)}; pass --labels neg,pos")
        sources.append(Source(fmt, split, m.path, label))
    return sources, metadata


def _match(pattern, fmt, flag):
    """The files of one pattern; a polarity folder stands for its .pos and .neg files."""
    if fmt == "polarity" and files.is_dir(pattern):
        return [m for suffix in POLARITY_SUFFIXES
                for m in files.match_files(outputs.join(pattern.rstrip("/"), f"*.{suffix}"), flag)]
    return files.match_files(pattern, flag)


def _folder_layout(labels):
    return examples.FolderLayout(
        fmt="folders", holds=f"one subfolder per label ({', '.join(labels)}) of text files",
        rule=f"one of --labels {','.join(labels)}: name the subfolders after the labels, or "
             "pass --labels naming them",
        files="LABEL/FILE text file")


def _label_namer(labels):
    """A subfolder's name -> the label it names (case-insensitive), or None."""
    by_name = {name.lower(): name for name in labels}
    return lambda folder: by_name.get(folder.lower())


# --------------------------------------------------------------------------- readers


def label_index(cell, labels):
    """A label cell -> its class index, or None when it names no class.

    A cell names a class by its name (case-insensitive, surrounding blanks ignored) or
    by its index ("0", "1", ...).
    """
    cell = cell.strip()
    for i, name in enumerate(labels):
        if cell.lower() == name.lower():
            return i
    if cell.isascii() and cell.isdigit() and int(cell) < len(labels):
        return int(cell)
    return None


def decode_lines(data, encoding, skip):
    """Bytes of a file -> its lines as str (line ends dropped); undecodable lines skipped.

    Only "\n" (and a "\r" before it) ends a line: `str.splitlines` would also split at
    U+0085, which is what Latin-1 decodes byte 0x85 (an ellipsis in Windows-1252) to.

    Args:
      data: the file's bytes.
      encoding: the codec.
      skip: called with "undecodable" for every line that does not decode.
    """
    raw_lines = data.split(b"\n")
    if raw_lines and not raw_lines[-1]:
        raw_lines.pop()  # the file's last line end
    lines = []
    for raw in raw_lines:
        try:
            lines.append(raw.removesuffix(b"\r").decode(encoding))
        except UnicodeDecodeError:
            skip("undecodable")
    return lines


def read_polarity(data, encoding, skip):
    """The texts of one sentence polarity file, one a line.

    Yields:
      str texts; blank lines and lines that do not decode are skipped through `skip`.
    """
    for line in decode_lines(data, encoding, skip):
        if not line.strip():
            skip("empty")
            continue
        yield line.strip()


# Header names taken for the default `--label-column label` / `--text-column text` when
# the header has no such column but exactly one of these.
COLUMN_SYNONYMS = {"label": ("label", "sentiment", "polarity", "class", "target"),
                   "text": ("text", "sentence", "review", "content", "document", "comment")}


def _column(spec, header, name, role):
    """A column flag -> its index, given the header row (or None)."""
    if spec.isdigit():
        return int(spec)
    lowered = [c.strip().lower() for c in header] if header is not None else []
    wanted = spec.strip().lower()
    if wanted in lowered:
        return lowered.index(wanted)
    synonyms = COLUMN_SYNONYMS.get(role, ()) if wanted == role else ()
    found = [c for c in lowered if c in synonyms]
    if len(found) == 1:
        return lowered.index(found[0])
    shown = ", ".join(repr(c) for c in header[:8]) if header else "nothing"
    if len(found) > 1:
        raise ValueError(f"{name}: its header has several {role} columns ({', '.join(found)}): "
                         f"choose one with --{role}-column NAME")
    raise ValueError(f"{name}: no {role} column {spec!r} in its first row ({shown}); name it with "
                     f"--{role}-column NAME, or give its 0-based index (--{role}-column 1)")


def read_table(data, *, delimiter, label_column, text_column, labels, encoding, name, skip):
    """The rows of one TSV or CSV file.

    Args:
      data: the file's bytes.
      delimiter: "\\t" (TSV, no quoting) or "," (CSV, RFC 4180 quoting).
      label_column, text_column: column flags, a header name or a 0-based index.
      labels: class names.
      encoding: the codec.
      name: the file's name, for messages.
      skip: called with a reason for every row left out.

    Yields:
      (class index, text str).

    Raises:
      ValueError: a named column is not in the first row.
    """
    lines = decode_lines(data, encoding, skip)
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO("\n".join(lines)), delimiter=delimiter, quoting=quoting)
    rows = iter(reader)
    first = next(rows, None)
    if first is None:
        return
    named = not (label_column.isdigit() and text_column.isdigit())
    label_at = _column(label_column, first, name, "label")
    text_at = _column(text_column, first, name, "text")
    if not named:
        # Index columns: the first row is a header when its label cell is no label.
        is_header = len(first) > label_at and label_index(first[label_at], labels) is None
        if not is_header:
            rows = iter([first] + list(rows))
    width = max(label_at, text_at) + 1
    for row in rows:
        if not row or (len(row) == 1 and not row[0].strip()):
            skip("empty")
            continue
        if len(row) < width:
            skip("malformed")
            continue
        label = label_index(row[label_at], labels)
        if label is None:
            skip("unknown_label")
            continue
        text = row[text_at].strip()
        if not text:
            skip("empty")
            continue
        yield label, text


def read_document(data, encoding, skip):
    """A whole file of a label folder -> its text, or None (skipped) when unusable."""
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError:
        skip("undecodable")
        return None
    if not text.strip():
        skip("empty")
        return None
    return text.strip()


def read_source(source, *, labels, encoding, label_column, text_column, skip):
    """All (class index, text) of one Source, read with the functions above."""
    with open_binary(source.path) as f:
        data = f.read()
    if source.fmt == "polarity":
        index = label_index(source.label, labels)
        for text in read_polarity(data, encoding, skip):
            yield index, text
    elif source.fmt == "folders":
        text = read_document(data, encoding, skip)
        if text is not None:
            yield label_index(source.label, labels), text
    else:
        yield from read_table(data, delimiter="\t" if source.fmt == "tsv" else ",",
                              label_column=label_column, text_column=text_column,
                              labels=labels, encoding=encoding, name=source.path, skip=skip)


def text_hash(text):
    """The first 63 bits of the sha256 of `text` (UTF-8): the example's key, >= 0."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") >> 1


# ----------------------------------------------------------------------------- Beam


def _counter(name):
    return beam.metrics.Metrics.counter(NAMESPACE, name)


class _ReadSource(examples.CountingReader):
    """Source -> (split, class index, text) per usable text it holds."""

    def __init__(self, labels, encoding, label_column, text_column):
        super().__init__(NAMESPACE, "texts_read", SKIP_REASONS)
        self._options = dict(labels=tuple(labels), encoding=encoding, label_column=label_column,
                             text_column=text_column)

    def process(self, source):
        for label, text in read_source(source, skip=self.skip, **self._options):
            self.read.inc()
            yield source.split, label, text


class ReadLabelledText(examples.ReadSources):
    """Reads labelled texts.

    Input: the pipeline root. Output: PCollection[(split, int class index, str text)],
    texts stripped and non-empty.
    """

    def __init__(self, *, sources, labels, encoding="utf-8", label_column="label",
                 text_column="text"):
        super().__init__(sources=sources, formats=FORMATS, splits=schema.SPLITS)
        self._fn = _ReadSource(check_labels(labels), encoding, label_column, text_column)

    def reader(self):
        return self._fn


class _TokenizeBatch(beam.DoFn):
    """[(split, label, text)] -> (split, label, int64 ids array, key) through the transform_fn."""

    def __init__(self, corpus_dir):
        self._corpus_dir = corpus_dir
        self.tokens, self.oov_tokens = _counter("tokens"), _counter("oov_tokens")
        self.no_tokens = _counter("skipped_no_tokens")
        self.all_oov = _counter("examples_all_oov")
        self.examples = {s: _counter(f"examples_{s}") for s in schema.SPLITS}

    def setup(self):
        self._ids, self._oov_id = tokens.load_tokenizer(self._corpus_dir)

    def process(self, batch):
        values, splits = self._ids([text for _, _, text in batch])
        for (split, label, text), start, end in zip(batch, splits[:-1], splits[1:]):
            ids = values[start:end]
            if ids.size == 0:
                self.no_tokens.inc()
                continue
            oov = int((ids == self._oov_id).sum())
            self.tokens.inc(int(ids.size))
            self.oov_tokens.inc(oov)
            if oov == ids.size:
                self.all_oov.inc()
            self.examples[split].inc()
            yield split, label, ids, text_hash(text)


class TokenizeText(beam.PTransform):
    """Tokenizes texts with the corpus job's transform_fn.

    Input: PCollection[(split, label, str text)]. Output: PCollection[(split, label,
    int64 numpy ids, int key)]; texts without any token are dropped (counted).
    """

    def __init__(self, *, corpus_dir, batch_size=_TOKENIZE_BATCH):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._corpus_dir, self._batch_size = corpus_dir, batch_size

    def expand(self, texts):
        return (texts
                # (split, label, text) -> lists of them, one graph call each
                | "BatchTexts" >> beam.BatchElements(min_batch_size=1,
                                                     max_batch_size=self._batch_size)
                | "ApplyTransformFn" >> beam.ParDo(_TokenizeBatch(self._corpus_dir)))


def encode_example(split, label, ids, key):
    """One text -> (split, label, serialized tf.train.Example in schema.FEATURE_SPEC)."""
    return split, label, examples.serialize({
        schema.TOKEN_IDS_KEY: examples.int64_feature(ids),
        schema.LABEL_KEY: examples.int64_feature([label]),
        schema.TEXT_KEY_HASH: examples.int64_feature([key]),
    })


def check_labels(labels, text=None):
    """Class names -> a tuple of them; raises ValueError naming `text` (or them) when unusable."""
    labels = tuple(labels)
    text = ",".join(labels) if text is None else text
    if len(labels) < 2 or any(not p for p in labels):
        raise ValueError(f"{text!r}: give at least two class names, comma-separated, "
                         "such as 'neg,pos'")
    if len({p.lower() for p in labels}) != len(labels):
        raise ValueError(f"{text!r}: a class name appears twice")
    return labels


def parse_labels(text):
    """`--labels` -> tuple of class names; raises ValueError (naming the text) when unusable."""
    return check_labels((p.strip() for p in str(text).split(",")), text)
