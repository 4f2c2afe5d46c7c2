"""Beam transforms of the corpus job: read text, tokenize, build windows, write them.

The job that runs them, and the contract of what it writes, is `jobs/corpus.py`.
"""


import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms import window as beam_window

from core import files, outputs, tokens
from core.beam import Progress
from schemas import corpus as schema

NAMESPACE = "embedflow.corpus"
_DOC_OPEN = b"<doc "
_DOC_CLOSE = b"</doc>"
FORMATS = ("auto", "text", "wikiextractor")


# ---------------------------------------------------------------------------- inputs


_CHUNK = 1 << 20
_SPLIT_BYTES = 64 << 20


def iter_lines(f, start=0, end=None, max_line_bytes=None):
    """Yields the lines of a byte range of an open file, streaming.

    A line belongs to the range that holds its first byte, so ranges of one file can
    be read independently. A line longer than `max_line_bytes` is never held in
    memory: it is read past and yielded as None.

    Args:
      f: binary file object (seekable when start > 0).
      start: first byte of the range.
      end: end of the range (exclusive), or None for the end of the file.
      max_line_bytes: longest line yielded whole, or None.

    Yields:
      bytes lines without the line terminator ("\n" or "\r\n"), or None for a line
      that was too long.
    """
    pos = start
    if start > 0:
        # The line holding byte start-1 belongs to the previous range: skip past it.
        f.seek(start - 1)
        pos = start - 1
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                return
            i = chunk.find(b"\n")
            if i >= 0:
                pos += i + 1
                buf, off = chunk, i + 1
                break
            pos += len(chunk)
    else:
        buf, off = b"", 0
    parts, held, too_long = [], 0, False
    line_start = pos
    while True:
        if not parts and not too_long and end is not None and line_start >= end:
            return
        i = buf.find(b"\n", off)
        if i < 0:
            piece = buf[off:]
            if piece and not too_long:
                held += len(piece)
                if max_line_bytes is not None and held > max_line_bytes:
                    parts, too_long = [], True
                else:
                    parts.append(piece)
            pos += len(buf) - off
            buf, off = f.read(_CHUNK), 0
            if not buf:
                if parts or too_long:
                    yield None if too_long else _strip_cr(b"".join(parts))
                return
            continue
        piece = buf[off:i]
        pos += i + 1 - off
        off = i + 1
        if too_long or (max_line_bytes is not None and held + len(piece) > max_line_bytes):
            yield None
        else:
            yield _strip_cr(b"".join(parts) + piece if parts else piece)
        parts, held, too_long = [], 0, False
        line_start = pos


def _strip_cr(line):
    return line[:-1] if line.endswith(b"\r") else line


class _SplitFiles(beam.DoFn):
    """(path, size) -> (path, start, end) byte ranges; compressed files stay whole."""

    def __init__(self, split_bytes):
        self._split = split_bytes

    def process(self, path_and_size):
        path, size = path_and_size
        if CompressionTypes.detect_compression_type(path) != CompressionTypes.UNCOMPRESSED:
            yield path, 0, None
            return
        for start in range(0, max(size, 1), self._split):
            yield path, start, min(start + self._split, size)


class _ReadDecodeLines(beam.DoFn):
    """(path, start, end) -> str paragraphs; drops markup, empty, binary and over-long lines."""

    def __init__(self, fmt, max_line_chars):
        self._fmt, self._max = fmt, max_line_chars
        c = lambda name: beam.metrics.Metrics.counter(NAMESPACE, name)  # noqa: E731
        self.lines_read = c("lines_read")
        self.invalid_utf8 = c("lines_invalid_utf8")
        self.skipped = {r: c(f"lines_skipped_{r}") for r in ("empty", "markup", "binary", "too_long")}
        self.paragraphs = c("paragraphs")

    def setup(self):
        self._progress = Progress("lines read")

    def process(self, shard):
        path, start, end = shard
        # UTF-8 needs at most 4 bytes a character, so this bound never drops a line
        # of max_line_chars characters; the exact check is on the decoded text.
        with files.open_decompressed(path) as f:
            for line in iter_lines(f, start, end, max_line_bytes=4 * self._max):
                text = self._decode(line)
                if text is not None:
                    yield text

    def _decode(self, line):
        self.lines_read.inc()
        self._progress.add(1)
        if line is None:
            self.skipped["too_long"].inc()
            return None
        if b"\x00" in line:
            self.skipped["binary"].inc()
            return None
        stripped = line.strip()
        if not stripped:
            self.skipped["empty"].inc()
            return None
        if self._fmt != "text" and (stripped.startswith(_DOC_OPEN) and stripped.endswith(b">")
                                    or stripped == _DOC_CLOSE):
            self.skipped["markup"].inc()
            return None
        try:
            text = stripped.decode("utf-8")
        except UnicodeDecodeError:
            self.invalid_utf8.inc()
            text = stripped.decode("utf-8", errors="replace")
        if len(text) > self._max:
            self.skipped["too_long"].inc()
            return None
        self.paragraphs.inc()
        return text


class ReadCorpus(beam.PTransform):
    """Reads paragraphs from files, streaming, in byte ranges of uncompressed files.

    Input: the pipeline root. Output: PCollection[str], one paragraph per element.
    """

    def __init__(self, *, files, fmt="auto", max_line_chars=10_000_000, split_bytes=_SPLIT_BYTES):
        super().__init__()
        if not files:
            raise ValueError("ReadCorpus needs at least one file")
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
        if split_bytes < 1:
            raise ValueError(f"split_bytes must be >= 1, got {split_bytes}")
        # Accept paths (sizes looked up) or (path, size) pairs.
        self._files = [f if isinstance(f, tuple) else (f, None) for f in files]
        self._fmt, self._max, self._split = fmt, max_line_chars, split_bytes

    def expand(self, pbegin):
        files = [(p, s if s is not None else FileSystems.match([p])[0].metadata_list[0].size_in_bytes)
                 for p, s in self._files]
        return (
            pbegin
            | "ListFiles" >> beam.Create(files)
            # (path, size) -> (path, start, end), spread over workers
            | "SplitFiles" >> beam.ParDo(_SplitFiles(self._split))
            | "SpreadRanges" >> beam.Reshuffle()
            # (path, start, end) -> str paragraphs
            | "ReadLines" >> beam.ParDo(_ReadDecodeLines(self._fmt, self._max)))


class _ToRecordBatches(beam.DoFn):
    """str paragraphs -> pa.RecordBatch with one `text` column, `batch_lines` rows each."""

    def __init__(self, batch_lines):
        self._batch_lines = batch_lines

    def start_bundle(self):
        self._buffer = []

    def process(self, text):
        self._buffer.append(text.encode("utf-8"))
        if len(self._buffer) >= self._batch_lines:
            yield self._flush()

    def finish_bundle(self):
        if self._buffer:
            yield beam_window.GlobalWindows.windowed_value(self._flush())

    def _flush(self):
        rows, self._buffer = self._buffer, []
        column = pa.array([[r] for r in rows], type=pa.large_list(pa.large_binary()))
        return pa.RecordBatch.from_arrays([column], [schema.TEXT_KEY])


def raw_tensor_adapter_config():
    """The TensorAdapterConfig that describes `_ToRecordBatches` output to tf.Transform."""
    from tensorflow_transform.tf_metadata import schema_utils  # pylint: disable=import-outside-toplevel
    from tfx_bsl.tfxio import tensor_adapter, tensor_representation_util  # pylint: disable=import-outside-toplevel

    raw_schema = schema_utils.schema_from_feature_spec(schema.RAW_DATA_FEATURE_SPEC)
    arrow_schema = pa.schema([pa.field(schema.TEXT_KEY, pa.large_list(pa.large_binary()))])
    return tensor_adapter.TensorAdapterConfig(
        arrow_schema, tensor_representation_util.InferTensorRepresentationsFromSchema(raw_schema))


class Tokenize(beam.PTransform):
    """Batches paragraphs for tf.Transform.

    Input: PCollection[str] paragraphs. Output: (PCollection[pa.RecordBatch],
    TensorAdapterConfig), the dataset form tf.Transform's Analyze/Transform take.
    """

    def __init__(self, *, batch_lines=512):
        super().__init__()
        if batch_lines < 1:
            raise ValueError(f"batch_lines must be >= 1, got {batch_lines}")
        self._batch_lines = batch_lines

    def expand(self, paragraphs):
        return (paragraphs | "BatchParagraphs" >> beam.ParDo(_ToRecordBatches(self._batch_lines)),
                raw_tensor_adapter_config())


# --------------------------------------------------------------------------- windows


def window_pairs(n, window):
    """Skip-gram pairs one run of `n` ids yields: (full window, expected with dynamic window).

    With the dynamic window, the radius of each centre is uniform on 1..window, so a
    context at distance d is kept with probability (window - d + 1) / window.
    """
    full = expected = 0.0
    for d in range(1, window + 1):
        if n > d:
            full += 2 * (n - d)
            expected += 2 * (n - d) * (window - d + 1) / window
    return int(full), expected


def split_runs(ids, oov_id, max_span):
    """In-vocabulary ids of one paragraph, OOV removed, cut into runs of <= max_span."""
    ids = ids[ids != oov_id]
    return [ids[i:i + max_span] for i in range(0, len(ids), max_span)]


def encode_window_record(ids):
    """int ids -> serialized tf.train.Example in schemas.corpus.WINDOWS_FEATURE_SPEC."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    feature = tf.train.Feature(int64_list=tf.train.Int64List(value=ids))
    return tf.train.Example(
        features=tf.train.Features(feature={schema.TOKEN_IDS_KEY: feature})).SerializeToString()


class _RecordBatchToWindows(beam.DoFn):
    """(pa.RecordBatch of token_ids, passthrough) -> serialized window records."""

    def __init__(self, oov_id, window, max_span):
        self._oov, self._window, self._max_span = oov_id, window, max_span
        c = lambda name: beam.metrics.Metrics.counter(NAMESPACE, name)  # noqa: E731
        self.tokens, self.oov_tokens = c("tokens"), c("oov_tokens")
        self.records, self.windows = c("window_records"), c("windows")
        self.pairs_full = c("pairs_full_window")
        self.pairs_expected = c("pairs_expected_dynamic_window")

    def setup(self):
        self._progress = Progress("tokens windowed")

    def process(self, element):
        batch = element[0] if isinstance(element, tuple) else element
        column = batch.column(batch.schema.get_field_index(schema.TOKEN_IDS_KEY))
        offsets = column.offsets.to_numpy()
        values = column.values.to_numpy(zero_copy_only=False)
        n_tokens = int(offsets[-1] - offsets[0])
        self.tokens.inc(n_tokens)
        self._progress.add(n_tokens)
        in_vocab = 0
        pairs_full, pairs_expected = 0, 0.0
        for row in range(len(offsets) - 1):
            for run in split_runs(values[offsets[row]:offsets[row + 1]], self._oov, self._max_span):
                in_vocab += len(run)
                full, expected = window_pairs(len(run), self._window)
                pairs_full += full
                pairs_expected += expected
                self.records.inc()
                yield encode_window_record(run.tolist())
        self.oov_tokens.inc(n_tokens - in_vocab)
        self.windows.inc(in_vocab)
        self.pairs_full.inc(pairs_full)
        self.pairs_expected.inc(int(round(pairs_expected)))


class MakeWindows(beam.PTransform):
    """Transformed record batches -> serialized window records.

    Input: PCollection[(pa.RecordBatch with a token_ids list column, passthrough)].
    Output: PCollection[bytes], serialized tf.train.Example, rebalanced by a Reshuffle
    so that writing is not fused onto the workers that tokenized.
    """

    def __init__(self, *, oov_id, window=5, max_span=1000):
        super().__init__()
        if oov_id < 1:
            raise ValueError(f"oov_id must be >= 1 (vocabulary size), got {oov_id}")
        self._fn = _RecordBatchToWindows(oov_id, window, max_span)

    def expand(self, transformed):
        return (transformed
                | "RunsToExamples" >> beam.ParDo(self._fn)
                | "Rebalance" >> beam.Reshuffle())


class WriteWindows(beam.PTransform):
    """PCollection[bytes] serialized examples -> sharded TFRecord files under `prefix`."""

    def __init__(self, *, prefix, num_shards):
        super().__init__()
        if num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {num_shards}")
        self._prefix, self._num_shards = prefix, num_shards

    def expand(self, records):
        return records | "WriteTFRecords" >> beam.io.WriteToTFRecord(
            self._prefix, file_name_suffix=schema.WINDOWS_SUFFIX, num_shards=self._num_shards,
            shard_name_template="-SSSSS-of-NNNNN")


# ------------------------------------------------------------------------- pipelines


# ------------------------------------------------------------------------ vocabulary


def _vocab_asset_path(transform_dir):
    return outputs.join(transform_dir, schema.TRANSFORM_FN_DIR, "assets", schema.VOCAB_ASSET_NAME)


def reorder_vocabulary(transform_dir, max_vocab, min_count):
    """Rewrites tf.Transform's vocabulary asset in (-count, token) order, cut to max_vocab.

    tf.Transform orders equal counts by token *descending*; embedflow's contract is
    ascending. The analyzer stores "count token" lines; the rewritten asset holds one
    token a line, the format `tft.apply_vocabulary` looks tokens up in (whole line).

    Returns:
      list of (token, count) in id order.

    Raises:
      ValueError: no token reaches --min-count.
    """
    # tf.Transform writes one placeholder token when no token passes the threshold.
    placeholder = tokens.empty_vocabulary_placeholder()
    path = _vocab_asset_path(transform_dir)
    entries = []
    for line in outputs.read_text(path).splitlines():
        if line:
            count, token = line.split(" ", 1)
            if token.encode("utf-8") != placeholder:
                entries.append((token, int(float(count))))
    entries.sort(key=lambda e: (-e[1], e[0].encode("utf-8")))
    if max_vocab is not None:
        entries = entries[:max_vocab]
    if not entries:
        raise ValueError(
            f"--min-count {min_count} leaves an empty vocabulary: no token occurs {min_count} "
            "times in the input. Lower --min-count or add text.")
    outputs.write_text(path, "".join(f"{t}\n" for t, _ in entries))
    return entries
