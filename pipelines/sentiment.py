"""Sentiment job: labelled text -> token-id examples (Beam, corpus transform_fn) -> classifier.

    embedflow sentiment --input PATH [--input PATH ...] --format tsv|csv|polarity|folders
                        --corpus DIR --embeddings DIR --output DIR
                        [--hidden 64] [--freeze | --fine-tune] [--fine-tune-rate 0.1]
                        [--folds K | --eval-input PATH ... | --eval-fraction F]
                        [--compare-scratch] [--curve-sizes 100,300,1000,3000] [--seed N]
                        [--labels neg,pos] [--label-column label] [--text-column text]
                        [--encoding ENC] [...] [Beam options]
    python -m pipelines.sentiment ...   (the same)

`--corpus` is a corpus job output and `--embeddings` an embedding trainer output made
from it (both refused without COMPLETED; their vocabularies must be the same). Every
text is tokenized by the corpus job's own `transform_fn`, so its ids are exactly the
rows of the trained vectors.

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

Evaluation: `--folds K` gives K-fold cross-validation over `--input` (the fold of an
example is its key modulo K, the key being the sha256 of its text: deterministic and
independent of order and sharding, and identical texts share a fold); `--eval-input`
texts are the eval set; otherwise `--eval-fraction F` (default 0.1) of `--input`,
chosen by the same key, is held out. `trainer/sentiment.py` documents the training.

Output directory (published only when complete, see `embedflow.artifacts`):

    examples/{train,eval}-SSSSS-of-NNNNN.tfrecord.gz
                        GZIP TFRecords of tf.train.Example, spec schemas.sentiment.FEATURE_SPEC:
                        "token_ids" (int64 list, the corpus ids; OOV tokens are the corpus
                        OOV id, its vocab_size), "label" (int64 class index), "text_hash"
                        (int64, the first 63 bits of the sha256 of the UTF-8 text).
                        `eval` only with --eval-input.
    model/              SavedModel, needs nothing else to serve: `serving_default` maps raw
                        strings "text" [batch] to "probabilities" float32 [batch, classes],
                        "class_ids" int64 [batch] and "classes" string [batch]; the corpus
                        transform_fn and the (trained) embeddings are inside.
    metrics.json        accuracy of pretrained (and scratch) models per fold, pooled
                        per-class precision/recall and confusion matrix, the learning curve
                        (accuracy against training-set size), the exported model's history.
    learning_curve.png, training_curves.png, confusion_matrix.png
    info.json           inputs and fingerprints, corpus and embeddings used, counters,
                        parameters, parameter counts, timings.
    COMPLETED           written last.
"""

import argparse
import csv
import hashlib
import io
import logging
import os
import time
import typing

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from embedflow import artifacts
from pipelines.corpus import PRODUCER as CORPUS_PRODUCER
from pipelines.corpus import pipeline_options
from pipelines import files
from pipelines.files import open_binary
from schemas import corpus as corpus_schema
from schemas import embeddings as embeddings_schema
from schemas import sentiment as schema

NAMESPACE = "embedflow.sentiment"
FORMATS = ("tsv", "csv", "polarity", "folders")
SKIP_REASONS = ("undecodable", "empty", "no_tokens", "unknown_label", "malformed")
EMBEDDINGS_PRODUCER = "embedflow train --corpus DIR --output DIR"
POLARITY_SUFFIXES = ("pos", "neg")

_TOKENIZE_BATCH = 256  # texts per call of the transform graph


def parse_args(argv):
    """Splits the job's own flags from Beam's.

    Returns:
      (job args namespace, list of Beam pipeline arguments).
    """
    parser = argparse.ArgumentParser(
        prog="embedflow sentiment",
        description="Classify text by averaged pretrained word embeddings, tokenized like the corpus.",
        epilog="Other flags go to Beam (for example --runner, --direct_num_workers, --project).")
    parser.add_argument("--input", action="append", required=True, metavar="PATH",
                        help="labelled texts: file, glob or folder (repeatable; local or gs://)")
    parser.add_argument("--format", choices=FORMATS, required=True,
                        help="tsv/csv rows, rt-polarity .pos/.neg files, or a folder per label")
    parser.add_argument("--corpus", required=True, metavar="DIR",
                        help="corpus job output: its transform_fn tokenizes the texts")
    parser.add_argument("--embeddings", required=True, metavar="DIR",
                        help="embedding trainer output made from --corpus")
    parser.add_argument("--output", required=True, metavar="DIR", help="output directory")
    held_out = parser.add_mutually_exclusive_group()
    held_out.add_argument("--folds", type=int, default=None, metavar="K",
                          help="K-fold cross-validation over --input")
    held_out.add_argument("--eval-input", action="append", metavar="PATH",
                          help="eval texts, same format (repeatable)")
    held_out.add_argument("--eval-fraction", type=float, default=None,
                          help="hold out this fraction of --input for eval (default 0.1)")
    parser.add_argument("--labels", default=",".join(schema.DEFAULT_LABELS),
                        help="class names in class-index order, comma-separated (default neg,pos)")
    parser.add_argument("--label-column", default="label",
                        help="tsv/csv: label column, a header name or 0-based index (default label)")
    parser.add_argument("--text-column", default="text",
                        help="tsv/csv: text column, a header name or 0-based index (default text)")
    parser.add_argument("--encoding", default=None,
                        help="text encoding (default latin-1 for polarity, utf-8 otherwise)")
    tuning = parser.add_mutually_exclusive_group()
    tuning.add_argument("--freeze", dest="fine_tune", action="store_false",
                        help="keep the pretrained embeddings fixed")
    tuning.add_argument("--fine-tune", dest="fine_tune", action="store_true",
                        help="train the pretrained embeddings with the rest (default)")
    parser.set_defaults(fine_tune=True)
    parser.add_argument("--compare-scratch", action="store_true",
                        help="also train the same model from random embeddings on the same splits")
    parser.add_argument("--curve-sizes", default="100,300,1000,3000",
                        help="training-set sizes of the learning curve, comma-separated; the full "
                             "set is always added; 'none' skips the curve (default 100,300,1000,3000)")
    parser.add_argument("--fine-tune-rate", type=float, default=None,
                        help="learning rate of the fine-tuned pretrained embeddings, relative to the "
                             "rest (default 0.1; scratch embeddings train at the full rate)")
    parser.add_argument("--no-standardize", dest="standardize", action="store_false", default=None,
                        help="feed the mean vector to the dense layers as it is, not batch-normalised")
    parser.add_argument("--raw-vectors", dest="normalize", action="store_false", default=None,
                        help="use the trained vectors as they are, not scaled to unit length")
    parser.add_argument("--hidden", type=int, default=64, help="units of the hidden layer (default 64)")
    parser.add_argument("--hidden-layers", type=int, default=1,
                        help="number of hidden layers of --hidden units (default 1)")
    parser.add_argument("--dropout", type=float, default=None,
                        help="dropout before each dense layer while training (default 0.5)")
    parser.add_argument("--word-dropout", type=float, default=None,
                        help="share of tokens dropped from each text while training (default 0.5)")
    parser.add_argument("--epochs", type=int, default=None, help="most epochs (default 40)")
    parser.add_argument("--batch-size", type=int, default=None, help="batch size (default 64)")
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="Adam learning rate (default 2e-3)")
    parser.add_argument("--patience", type=int, default=None,
                        help="stop after this many epochs without a lower validation loss (default 4)")
    parser.add_argument("--min-epoch-batches", type=int, default=None,
                        help="an epoch is a pass over the training set or this many batches, "
                             "whichever is more (default 50)")
    parser.add_argument("--validation-fraction", type=float, default=None,
                        help="share of each training set kept aside for early stopping (default 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, dropout and shuffling")
    parser.add_argument("--num-shards", type=int, default=2, help="example files per split (default 2)")
    args, beam_args = parser.parse_known_args(argv)
    if args.folds is None and args.eval_input is None and args.eval_fraction is None:
        args.eval_fraction = 0.1
    if args.encoding is None:
        args.encoding = "latin-1" if args.format == "polarity" else "utf-8"
    _validate(args)
    return args, beam_args


def parse_labels(text):
    """`--labels` -> tuple of class names; raises ValueError when unusable."""
    labels = tuple(p.strip() for p in str(text).split(","))
    if len(labels) < 2 or any(not p for p in labels):
        raise ValueError(f"--labels {text!r}: give at least two class names, comma-separated, "
                         "such as 'neg,pos'")
    if len({p.lower() for p in labels}) != len(labels):
        raise ValueError(f"--labels {text!r}: a class name appears twice")
    return labels


def parse_curve_sizes(text):
    """`--curve-sizes` -> sorted tuple of positive ints ('none' or '' -> ())."""
    text = str(text).strip()
    if text.lower() in ("", "none"):
        return ()
    try:
        sizes = sorted({int(p.replace("_", "")) for p in text.split(",")})
    except ValueError:
        raise ValueError(f"--curve-sizes {text!r}: expected sizes such as '100,300,1000'") from None
    if sizes[0] < 2:
        raise ValueError(f"--curve-sizes {text!r}: every size must be >= 2")
    return tuple(sizes)


def _validate(args):
    checks = [
        (args.folds is None or args.folds >= 2, f"--folds must be >= 2, got {args.folds}"),
        (args.eval_fraction is None or 0 < args.eval_fraction < 1,
         f"--eval-fraction must be in (0, 1), got {args.eval_fraction}"),
        (args.num_shards >= 1, f"--num-shards must be >= 1, got {args.num_shards}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    try:
        ascii_compatible = "\n,\t".encode(args.encoding) == b"\n,\t"
    except LookupError:
        raise ValueError(f"--encoding {args.encoding!r} is not a codec Python knows") from None
    if not ascii_compatible:
        raise ValueError(f"--encoding {args.encoding}: only encodings that write line ends, "
                         "commas and tabs as ASCII bytes are supported (utf-8, latin-1, cp1252, ...)")
    args.labels = parse_labels(args.labels)
    args.curve_sizes = parse_curve_sizes(args.curve_sizes)
    artifacts.check_output_path(args.output)


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
    known = {name.lower() for name in labels}
    if fmt == "folders":
        sources, metadata = [], []
        for pattern in patterns:
            for m, label in _list_label_folders(pattern, flag, labels):
                sources.append(Source(fmt, split, m.path, label))
                metadata.append(m)
        return sources, metadata
    found = {}
    for pattern in patterns:
        if fmt == "polarity" and files.is_dir(pattern):
            matched = [m for suffix in POLARITY_SUFFIXES
                       for m in files.match_files(artifacts.join(pattern.rstrip("/"), f"*.{suffix}"), flag)]
        else:
            matched = files.match_files(pattern, flag)
        found.update((m.path, m) for m in matched)
    metadata = [found[p] for p in sorted(found)]
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


def _list_label_folders(folder, flag, labels):
    """A folder of label subfolders -> [(FileMetadata, label)] of the files inside them."""
    if not files.is_dir(folder):
        raise ValueError(f"{flag} {folder}: with --format folders, give a folder holding one "
                         f"subfolder per label ({', '.join(labels)}) of text files")
    by_name = {name.lower(): name for name in labels}
    pattern = artifacts.join(folder.rstrip("/"), "*", "*")
    found = []
    for m in FileSystems.match([pattern])[0].metadata_list:
        label_dir = os.path.basename(os.path.dirname(m.path))
        if not files.is_visible(label_dir) or not files.is_visible(m.path) or files.is_dir(m.path):
            continue
        if label_dir.lower() not in by_name:
            raise ValueError(f"{flag} {folder}: subfolder {label_dir!r} is not one of --labels "
                             f"{','.join(labels)}: name the subfolders after the labels, or "
                             "pass --labels naming them")
        found.append((m, by_name[label_dir.lower()]))
    if not found:
        raise FileNotFoundError(f"{flag} {folder} holds no LABEL/FILE text file")
    return sorted(found, key=lambda f: f[0].path)


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


def _column(spec, header, name, role):
    """A column flag -> its index, given the header row (or None)."""
    if spec.isdigit():
        return int(spec)
    lowered = [c.strip().lower() for c in header] if header is not None else []
    if spec.strip().lower() not in lowered:
        raise ValueError(f"{name}: its first row has no {role} column {spec!r}: add a header row "
                         f"naming the columns, or pass --{role}-column as a 0-based index")
    return lowered.index(spec.strip().lower())


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


class _ReadSource(beam.DoFn):
    """Source -> (split, class index, text) per usable text it holds."""

    def __init__(self, labels, encoding, label_column, text_column):
        self._options = dict(labels=tuple(labels), encoding=encoding, label_column=label_column,
                             text_column=text_column)
        self.read = _counter("texts_read")
        self.skipped = {r: _counter(f"skipped_{r}") for r in SKIP_REASONS}

    def _skip(self, reason):
        self.skipped[reason].inc()

    def process(self, source):
        for label, text in read_source(source, skip=self._skip, **self._options):
            self.read.inc()
            yield source.split, label, text


class ReadLabelledText(beam.PTransform):
    """Reads labelled texts.

    Input: the pipeline root. Output: PCollection[(split, int class index, str text)],
    texts stripped and non-empty.
    """

    def __init__(self, *, sources, labels, encoding="utf-8", label_column="label",
                 text_column="text"):
        super().__init__()
        if not sources:
            raise ValueError("ReadLabelledText needs at least one source")
        bad = [s for s in sources if s.fmt not in FORMATS or s.split not in schema.SPLITS]
        if bad:
            raise ValueError(f"ReadLabelledText: invalid source {bad[0]}")
        self._sources = list(sources)
        self._fn = _ReadSource(parse_labels(",".join(labels)), encoding, label_column, text_column)

    def expand(self, pbegin):
        return (pbegin
                | "ListSources" >> beam.Create(self._sources)
                # Spread the sources (label-folder files above all) over the workers.
                | "SpreadSources" >> beam.Reshuffle()
                # Source -> (split, label, text)
                | "ReadSources" >> beam.ParDo(self._fn))


class _TokenizeBatch(beam.DoFn):
    """[(split, label, text)] -> (split, label, int64 ids array, key) through the transform_fn."""

    def __init__(self, corpus_dir):
        self._corpus_dir = corpus_dir
        self.tokens, self.oov_tokens = _counter("tokens"), _counter("oov_tokens")
        self.no_tokens = _counter("skipped_no_tokens")
        self.all_oov = _counter("examples_all_oov")
        self.examples = {s: _counter(f"examples_{s}") for s in schema.SPLITS}

    def setup(self):
        self._ids, self._oov_id = load_tokenizer(self._corpus_dir)

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


def load_tokenizer(corpus_dir):
    """The corpus job's transform_fn as a function: list of str -> (ids, row_splits), numpy.

    Returns:
      (function, the OOV id == the corpus vocabulary size).
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    import tensorflow_transform as tft  # pylint: disable=import-outside-toplevel

    output = tft.TFTransformOutput(corpus_dir)
    layer = output.transform_features_layer()
    oov_id = output.vocabulary_size_by_name(corpus_schema.VOCAB_ASSET_NAME)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def token_ids(text):
        ids = layer({corpus_schema.TEXT_KEY: text})[corpus_schema.TOKEN_IDS_KEY]
        if isinstance(ids, tf.SparseTensor):
            ids = tf.RaggedTensor.from_sparse(ids)
        return ids.values, ids.row_splits

    def run(texts):
        values, splits = token_ids(tf.constant([t.encode("utf-8") for t in texts], tf.string))
        return values.numpy(), splits.numpy()

    return run, oov_id


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


def encode_example(ids, label, key):
    """ids, class index, key -> serialized tf.train.Example in schema.FEATURE_SPEC."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    feature = {
        schema.TOKEN_IDS_KEY: tf.train.Feature(int64_list=tf.train.Int64List(
            value=[int(i) for i in ids])),
        schema.LABEL_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
        schema.TEXT_KEY_HASH: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(key)])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


class WriteExamples(beam.PTransform):
    """PCollection[(split, label, ids, key)] -> examples/{split}-SSSSS-of-NNNNN.tfrecord.gz."""

    def __init__(self, *, examples_dir, num_shards, splits=schema.SPLITS):
        super().__init__()
        if num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {num_shards}")
        self._dir, self._num_shards, self._splits = examples_dir, num_shards, tuple(splits)

    def expand(self, examples):
        by_split = examples | "PartitionBySplit" >> beam.Partition(
            lambda element, _: self._splits.index(element[0]), len(self._splits))
        for split, pcoll in zip(self._splits, by_split):
            name = split.title()
            _ = (pcoll
                 # (split, label, ids, key) -> serialized tf.train.Example
                 | f"Encode{name}" >> beam.MapTuple(
                     lambda _, label, ids, key: encode_example(ids, label, key))
                 | f"Write{name}" >> beam.io.WriteToTFRecord(
                     artifacts.join(self._dir, split), file_name_suffix=schema.EXAMPLES_SUFFIX,
                     num_shards=self._num_shards, shard_name_template="-SSSSS-of-NNNNN",
                     compression_type=CompressionTypes.GZIP))


def build(pipeline, args, sources, examples_dir):
    """Adds the preprocessing to `pipeline`: sources -> example TFRecords in `examples_dir`."""
    splits = (schema.TRAIN, schema.EVAL) if args.eval_input else (schema.TRAIN,)
    _ = (pipeline
         | "ReadLabelledText" >> ReadLabelledText(
             sources=sources, labels=args.labels, encoding=args.encoding,
             label_column=args.label_column, text_column=args.text_column)
         | "TokenizeText" >> TokenizeText(corpus_dir=args.corpus)
         | "WriteExamples" >> WriteExamples(examples_dir=examples_dir,
                                            num_shards=args.num_shards, splits=splits))


def counters(result):
    """The job's counter totals of a finished pipeline."""
    return files.counter_totals(result, NAMESPACE)


def _check_splits(counts, args):
    """Raises when a split came out empty, saying what the counters saw."""
    seen = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "nothing read"
    if not counts.get(f"examples_{schema.TRAIN}"):
        raise ValueError(f"the train split is empty ({seen}): --input {' '.join(args.input)} "
                         "holds no usable text")
    if args.eval_input and not counts.get(f"examples_{schema.EVAL}"):
        raise ValueError(f"the eval split is empty ({seen}): --eval-input "
                         f"{' '.join(args.eval_input)} holds no usable text")


def example_files(examples_dir, split):
    """The sorted example files of one split."""
    pattern = artifacts.join(examples_dir, f"{split}-*{schema.EXAMPLES_SUFFIX}")
    return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)


def check_inputs(corpus_dir, embeddings_dir):
    """Refuses incomplete or mismatched --corpus/--embeddings before any work.

    Returns:
      (corpus info.json, embeddings info.json, corpus vocabulary size).

    Raises:
      FileNotFoundError: a directory is missing or has no COMPLETED marker.
      ValueError: the embeddings were not trained on this corpus's vocabulary.
    """
    corpus_info = artifacts.require_completed(corpus_dir, "--corpus", CORPUS_PRODUCER)
    embeddings_info = artifacts.require_completed(embeddings_dir, "--embeddings",
                                                  EMBEDDINGS_PRODUCER)
    corpus_vocab = [line.split("\t", 1)[0] for line in artifacts.read_text(
        artifacts.join(corpus_dir, corpus_schema.VOCAB_FILE)).splitlines()]
    vector_vocab = [line.split("\t", 1)[0] for line in artifacts.read_text(
        artifacts.join(embeddings_dir, embeddings_schema.VOCAB_TXT)).splitlines()]
    if corpus_vocab != vector_vocab:
        raise ValueError(
            f"--embeddings {embeddings_dir} were not trained on --corpus {corpus_dir}: their "
            f"vocabularies differ ({len(vector_vocab)} vs {len(corpus_vocab)} words). Pass the "
            "corpus directory the embeddings were trained from.")
    return corpus_info, embeddings_info, len(corpus_vocab)


def run(argv=None):
    """Runs the sentiment job: preprocessing, then training. Returns the output directory."""
    from trainer import sentiment as trainer  # pylint: disable=import-outside-toplevel

    args, beam_args = parse_args(argv)
    config = trainer.config_from_args(args)  # bad training flags fail before any work
    corpus_info, embeddings_info, vocab_size = check_inputs(args.corpus, args.embeddings)
    sources, metadata = list_sources(args.input, args.format, schema.TRAIN, "--input", args.labels)
    eval_metadata = []
    if args.eval_input:
        eval_sources, eval_metadata = list_sources(args.eval_input, args.format, schema.EVAL,
                                                   "--eval-input", args.labels)
        sources += eval_sources
    file_info, fingerprint = artifacts.fingerprint_files(metadata)
    eval_file_info, eval_fingerprint = artifacts.fingerprint_files(eval_metadata)
    logging.info("sentiment: %d %s sources, fingerprint %s", len(sources), args.format,
                 fingerprint[:12])

    inputs = [m.path for m in metadata + eval_metadata] + [args.corpus, args.embeddings]
    with artifacts.StagedOutput(args.output, inputs=inputs) as out:
        examples_dir = artifacts.join(out.path, schema.EXAMPLES_DIR)
        started = time.time()
        with beam.Pipeline(options=pipeline_options(beam_args, "sentiment")) as p:
            build(p, args, sources, examples_dir)
        counts = counters(p.result)
        preprocessed = time.time()
        _check_splits(counts, args)
        report = trainer.train(
            config,
            examples=trainer.load_examples(example_files(examples_dir, schema.TRAIN)),
            eval_examples=(trainer.load_examples(example_files(examples_dir, schema.EVAL))
                           if args.eval_input else None),
            folds=args.folds, eval_fraction=args.eval_fraction,
            vectors=trainer.load_vectors(args.embeddings, vocab_size),
            corpus_dir=args.corpus, labels=args.labels, compare_scratch=args.compare_scratch,
            curve_sizes=args.curve_sizes, output_dir=out.path)
        info = {
            "job": "sentiment",
            "inputs": {"format": args.format, "patterns": args.input, "files": file_info,
                       "fingerprint": fingerprint, "encoding": args.encoding},
            "eval_inputs": ({"patterns": args.eval_input, "files": eval_file_info,
                             "fingerprint": eval_fingerprint} if args.eval_input else None),
            "corpus": {"dir": args.corpus, "fingerprint": corpus_info["inputs"]["fingerprint"],
                       "completed_at": corpus_info.get("completed_at"), "vocab_size": vocab_size},
            "embeddings": {"dir": args.embeddings,
                           "completed_at": embeddings_info.get("completed_at"),
                           "parameters": embeddings_info.get("parameters")},
            "parameters": {"labels": list(args.labels), "folds": args.folds,
                           "eval_fraction": args.eval_fraction,
                           "compare_scratch": args.compare_scratch,
                           "curve_sizes": list(args.curve_sizes),
                           "label_column": args.label_column, "text_column": args.text_column,
                           "num_shards": args.num_shards, **trainer.config_dict(config)},
            "counts": counts,
            "examples": {"dir": schema.EXAMPLES_DIR, "suffix": schema.EXAMPLES_SUFFIX,
                         "compression": schema.EXAMPLES_COMPRESSION},
            "model": report,
            "seconds": {"preprocess": round(preprocessed - started, 2),
                        "train": report["seconds"]},
        }
        out.publish(info)
    logging.info("sentiment: wrote %s", args.output)
    return args.output


if __name__ == "__main__":
    from embedflow import cli

    cli.exit_now(cli.run_job("sentiment", run, os.sys.argv[1:]))
