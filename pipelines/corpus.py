"""Corpus job: text files -> vocabulary + skip-gram windows (Beam + tf.Transform).

    embedflow corpus --input GLOB [--input GLOB ...] --output DIR [options] [Beam options]
    python -m pipelines.corpus ...   (the same; the form Dataflow's launcher uses)

Input: files by glob (several `--input`s, local or `gs://`, `.gz`/`.bz2` by extension),
plain text (a line is a paragraph) or WikiExtractor output (`<doc ...>`/`</doc>` lines
are dropped; `--format auto` drops them wherever they appear). Invalid UTF-8 is
replaced (U+FFFD) and counted; lines holding NUL bytes and lines longer than
`--max-line-chars` are skipped and counted. A glob that matches nothing, a file that
looks binary, and inputs that are all empty are errors before any work starts.

The job runs two Beam pipelines. The first analyses the corpus with tf.Transform
(tokenizer + `tft.vocabulary`); the vocabulary asset is then re-ordered by
(-count, token) and cut to `--max-vocab`, so ids are deterministic; the second
applies that `transform_fn` and writes the windows.

Output directory (published only when complete, see `embedflow.artifacts`):

    transform_fn/, transformed_metadata/   tf.Transform output (tft.TFTransformOutput);
                                           maps {"text": string} to {"token_ids": int64}
    vocab.tsv                              token<TAB>count; line i is id i; ordered by
                                           (-count, token). id == vocab_size is the
                                           single out-of-vocabulary id.
    windows/windows-SSSSS-of-NNNNN.tfrecord
                                           tf.train.Example records, spec
                                           schemas.corpus.WINDOWS_FEATURE_SPEC: one
                                           "token_ids" int64 list per record, a run of
                                           at most --max-span in-vocabulary ids from one
                                           paragraph (OOV tokens removed, as word2vec
                                           removes them before windowing).
    info.json                              inputs + fingerprints, counters, parameters,
                                           vocabulary size, bytes per window and pair.
    COMPLETED                              written last.

Windows: every position of a record is the centre of one skip-gram window of
radius `--window`; windows never cross a record, so never a paragraph. The job
stores *full* windows, compactly, as the token runs themselves: frequent-word
subsampling (`--sample`) and the dynamic window (a radius drawn uniformly from
1..window for every centre) are drawn again by the trainer for every epoch, as
word2vec does, and materialising pairs would cost ~20 bytes a pair instead of the
~0.4 bytes a pair of a varint-coded id run. `--sample` and `--window` are recorded
in info.json as the trainer's defaults.
"""

import argparse
import json
import logging
import math
import os
import time

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions, StandardOptions
from apache_beam.transforms import window as beam_window

from embedflow import artifacts
from pipelines import files
from schemas import corpus as schema

NAMESPACE = "embedflow.corpus"
_DOC_OPEN = b"<doc "
_DOC_CLOSE = b"</doc>"
_SNIFF_BYTES = 8192
FORMATS = ("auto", "text", "wikiextractor")
PRODUCER = "embedflow corpus --input GLOB --output DIR"


def parse_args(argv):
    """Splits the job's own flags from Beam's.

    Returns:
      (job args namespace, list of Beam pipeline arguments).
    """
    parser = argparse.ArgumentParser(
        prog="embedflow corpus",
        description="Tokenize text into a vocabulary and skip-gram windows (TFRecord).",
        epilog="Other flags go to Beam (for example --runner, --direct_running_mode, "
               "--direct_num_workers, --project, --region, --temp_location).")
    parser.add_argument("--input", action="append", required=True, metavar="GLOB",
                        help="text files to read (repeatable; local or gs://; .gz/.bz2)")
    parser.add_argument("--output", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--format", choices=FORMATS, default="auto",
                        help="text: every line is text; wikiextractor/auto: drop <doc> markup lines")
    parser.add_argument("--min-count", type=int, default=5,
                        help="leave out tokens seen fewer times (default 5)")
    parser.add_argument("--max-vocab", type=int, default=None,
                        help="keep at most this many tokens, the most frequent")
    parser.add_argument("--window", type=int, default=5,
                        help="skip-gram window radius (default 5)")
    parser.add_argument("--sample", type=float, default=1e-3,
                        help="frequent-word subsampling threshold the trainer uses (default 1e-3; 0 = off)")
    parser.add_argument("--max-span", type=int, default=1000,
                        help="longest run of ids in one record; longer paragraphs are split (default 1000)")
    parser.add_argument("--max-line-chars", type=int, default=10_000_000,
                        help="skip (and count) lines longer than this (default 10,000,000)")
    parser.add_argument("--num-shards", type=int, default=0,
                        help="window shards; 0 = by input size, at least 4 (default 0)")
    parser.add_argument("--batch-lines", type=int, default=512,
                        help="paragraphs per tf.Transform record batch (default 512)")
    args, beam_args = parser.parse_known_args(argv)
    _validate(args)
    return args, beam_args


def _validate(args):
    checks = [
        (args.min_count >= 1, f"--min-count must be >= 1, got {args.min_count}"),
        (args.max_vocab is None or args.max_vocab >= 1,
         f"--max-vocab must be >= 1, got {args.max_vocab}"),
        (args.window >= 1, f"--window must be >= 1, got {args.window}"),
        (0 <= args.sample < 1, f"--sample must be in [0, 1), got {args.sample}"),
        (args.max_span >= 2, f"--max-span must be >= 2, got {args.max_span}"),
        (args.max_line_chars >= 1, f"--max-line-chars must be >= 1, got {args.max_line_chars}"),
        (args.num_shards >= 0, f"--num-shards must be >= 0, got {args.num_shards}"),
        (args.batch_lines >= 1, f"--batch-lines must be >= 1, got {args.batch_lines}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    artifacts.check_output_path(args.output)


# ---------------------------------------------------------------------------- inputs


def _open_decompressed(path):
    return FileSystems.open(path, compression_type=CompressionTypes.detect_compression_type(path))


def match_inputs(patterns):
    """Expands the globs before any work starts.

    Returns:
      Sorted, de-duplicated Beam `FileMetadata` of the matched files.

    Raises:
      FileNotFoundError: a glob matches nothing.
      ValueError: a file looks binary, or every file is empty.
    """
    found = {}
    for pattern in patterns:
        try:
            matched = FileSystems.match([pattern])[0].metadata_list
        except Exception as e:  # Beam raises BeamIOError for missing local paths
            raise FileNotFoundError(f"--input {pattern}: cannot list it ({e})") from e
        matched = [m for m in matched if not m.path.endswith("/")]
        if not matched:
            raise FileNotFoundError(f"--input {pattern} matches no file: check the path or glob")
        for m in matched:
            found[m.path] = m
    files = [found[p] for p in sorted(found)]
    for m in files:
        if m.size_in_bytes == 0:
            continue
        with _open_decompressed(m.path) as f:
            head = f.read(_SNIFF_BYTES)
        if b"\x00" in head:
            raise ValueError(
                f"--input {m.path} looks binary (NUL bytes in its first {_SNIFF_BYTES} bytes): "
                "pass only text files")
    if all(m.size_in_bytes == 0 for m in files):
        raise ValueError(f"--input {' '.join(patterns)}: every matched file is empty")
    return files


class _Progress:
    """Logs a throughput line at most every `every` seconds (per worker)."""

    def __init__(self, what, every=30.0):
        self.what, self.every = what, every
        self.count, self.start, self.last = 0, time.time(), time.time()

    def add(self, n):
        self.count += n
        now = time.time()
        if now - self.last >= self.every:
            self.last = now
            logging.info("%s: %d so far, %.0f/s", self.what, self.count,
                         self.count / max(now - self.start, 1e-9))


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
        self._progress = _Progress("lines read")

    def process(self, shard):
        path, start, end = shard
        # UTF-8 needs at most 4 bytes a character, so this bound never drops a line
        # of max_line_chars characters; the exact check is on the decoded text.
        with _open_decompressed(path) as f:
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
        self._progress = _Progress("tokens windowed")

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


def build_analyze(pipeline, args, files, transform_dir, temp_dir):
    """Adds the analysis pass: paragraphs -> tf.Transform transform_fn in `transform_dir`."""
    import tensorflow_transform.beam as tft_beam  # pylint: disable=import-outside-toplevel

    from pipelines.tokenize import make_preprocessing_fn  # pylint: disable=import-outside-toplevel

    with tft_beam.Context(temp_dir=temp_dir):
        dataset = (pipeline
                   | "ReadCorpus" >> ReadCorpus(files=files, fmt=args.format,
                                                 max_line_chars=args.max_line_chars)
                   | "Tokenize" >> Tokenize(batch_lines=args.batch_lines))
        transform_fn = dataset | "AnalyzeVocabulary" >> tft_beam.AnalyzeDataset(
            make_preprocessing_fn(args.min_count))
        _ = transform_fn | "WriteTransformFn" >> tft_beam.WriteTransformFn(transform_dir)


def build_transform(pipeline, args, files, transform_dir, temp_dir, oov_id, windows_prefix,
                    num_shards):
    """Adds the transform pass: paragraphs -> token ids -> window TFRecords."""
    import tensorflow_transform.beam as tft_beam  # pylint: disable=import-outside-toplevel

    with tft_beam.Context(temp_dir=temp_dir):
        dataset = (pipeline
                   | "ReadCorpus" >> ReadCorpus(files=files, fmt=args.format,
                                                 max_line_chars=args.max_line_chars)
                   | "Tokenize" >> Tokenize(batch_lines=args.batch_lines))
        transform_fn = pipeline | "ReadTransformFn" >> tft_beam.ReadTransformFn(transform_dir)
        # (pa.RecordBatch with token_ids, passthrough dict)
        transformed, _ = (dataset, transform_fn) | "ApplyVocabulary" >> tft_beam.TransformDataset(
            output_record_batches=True)
        _ = (transformed
             | "MakeWindows" >> MakeWindows(oov_id=oov_id, window=args.window, max_span=args.max_span)
             | "WriteWindows" >> WriteWindows(prefix=windows_prefix, num_shards=num_shards))


def build(pipeline, args, files, transform_dir, temp_dir, oov_id=None, windows_prefix=None,
          num_shards=4):
    """Adds one pass of the job to `pipeline`: analysis when `oov_id` is None, else transform."""
    if oov_id is None:
        build_analyze(pipeline, args, files, transform_dir, temp_dir)
    else:
        build_transform(pipeline, args, files, transform_dir, temp_dir, oov_id, windows_prefix,
                        num_shards)


# ------------------------------------------------------------------------ vocabulary


def _vocab_asset_path(transform_dir):
    return artifacts.join(transform_dir, schema.TRANSFORM_FN_DIR, "assets", schema.VOCAB_ASSET_NAME)


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
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from tensorflow_transform import analyzers  # pylint: disable=import-outside-toplevel

    # tf.Transform writes one placeholder token when no token passes the threshold.
    _, placeholder = analyzers.get_empy_vocabulary_dummy_value(tf.string)
    path = _vocab_asset_path(transform_dir)
    entries = []
    for line in artifacts.read_text(path).splitlines():
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
    artifacts.write_text(path, "".join(f"{t}\n" for t, _ in entries))
    return entries


def pipeline_options(beam_args, job_name):
    options = PipelineOptions(beam_args)
    standard = options.view_as(StandardOptions)
    if not standard.runner:
        # Name the in-process runner: the default DirectRunner first tries to fetch
        # the Prism binary. --direct_running_mode/--direct_num_workers still apply.
        standard.runner = "FnApiRunner"
    options.view_as(SetupOptions).save_main_session = False
    if job_name and hasattr(options.view_as(beam.options.pipeline_options.GoogleCloudOptions), "job_name"):
        gcp = options.view_as(beam.options.pipeline_options.GoogleCloudOptions)
        if gcp.job_name:
            gcp.job_name = f"{gcp.job_name}-{job_name}"
    return options


def _counters(result):
    return files.counter_totals(result, NAMESPACE)


def _windows_bytes(windows_dir):
    files = artifacts.list_files(windows_dir)
    if not files:
        return 0, 0
    sizes = [m.size_in_bytes for m in FileSystems.match([windows_dir.rstrip("/") + "/*"])[0].metadata_list]
    return len(files), sum(sizes)


def default_num_shards(files):
    total = sum(m.size_in_bytes for m in files)
    return max(4, min(1000, math.ceil(total / (64 << 20))))


def run(argv=None):
    """Runs the corpus job. Returns the output directory."""
    args, beam_args = parse_args(argv)
    files = match_inputs(args.input)
    file_info, fingerprint = artifacts.fingerprint_files(files)
    paths = [(m.path, m.size_in_bytes) for m in files]
    num_shards = args.num_shards or default_num_shards(files)
    logging.info("corpus: %d input files (%d bytes), fingerprint %s", len(files),
                 sum(m.size_in_bytes for m in files), fingerprint[:12])

    with artifacts.StagedOutput(args.output, inputs=[m.path for m in files]) as out:
        temp_dir = artifacts.join(out.path, "tmp")
        started = time.time()
        with beam.Pipeline(options=pipeline_options(beam_args, "analyze")) as p:
            build(p, args, paths, out.path, temp_dir)
        counters = _counters(p.result)
        analyzed = time.time()
        vocab = reorder_vocabulary(out.path, args.max_vocab, args.min_count)
        oov_id = len(vocab)
        artifacts.write_text(artifacts.join(out.path, schema.VOCAB_FILE),
                             "".join(f"{t}\t{c}\n" for t, c in vocab))
        logging.info("corpus: vocabulary of %d tokens (min count %d); writing windows",
                     oov_id, args.min_count)

        windows_dir = artifacts.join(out.path, schema.WINDOWS_DIR)
        with beam.Pipeline(options=pipeline_options(beam_args, "windows")) as p:
            build(p, args, paths, out.path, temp_dir, oov_id=oov_id,
                  windows_prefix=artifacts.join(windows_dir, schema.WINDOWS_PREFIX),
                  num_shards=num_shards)
        for name, value in _counters(p.result).items():
            if name not in counters or name in ("tokens", "oov_tokens", "windows", "window_records")\
                    or name.startswith("pairs_"):
                counters[name] = value
        artifacts.delete_tree(temp_dir)
        finished = time.time()

        shard_count, windows_bytes = _windows_bytes(windows_dir)
        if counters.get("windows", 0) == 0:
            raise ValueError("the corpus yields no in-vocabulary token: nothing to train on "
                             f"(inputs: {' '.join(args.input)})")
        info = {
            "job": "corpus",
            "inputs": {"patterns": args.input, "files": file_info, "fingerprint": fingerprint},
            "parameters": {
                "format": args.format, "min_count": args.min_count, "max_vocab": args.max_vocab,
                "window": args.window, "sample": args.sample, "max_span": args.max_span,
                "max_line_chars": args.max_line_chars, "num_shards": num_shards,
                "batch_lines": args.batch_lines,
            },
            "counts": counters,
            "vocab_size": oov_id,
            "oov_id": oov_id,
            "vocab_tokens_covered": sum(c for _, c in vocab),
            "windows": {
                "dir": schema.WINDOWS_DIR, "shards": shard_count, "bytes": windows_bytes,
                "records": counters.get("window_records", 0),
                "bytes_per_window": windows_bytes / max(counters.get("windows", 0), 1),
                "bytes_per_pair_full_window": windows_bytes / max(counters.get("pairs_full_window", 0), 1),
                "bytes_per_pair_dynamic_window":
                    windows_bytes / max(counters.get("pairs_expected_dynamic_window", 0), 1),
            },
            "seconds": {"analyze": round(analyzed - started, 2),
                        "transform": round(finished - analyzed, 2)},
        }
        out.publish(info)
    logging.info("corpus: wrote %s\n%s", args.output, json.dumps(info["counts"], sort_keys=True))
    return args.output


if __name__ == "__main__":
    from embedflow import cli

    cli.exit_now(cli.run_job("corpus", run, os.sys.argv[1:]))
