"""Corpus job: text files -> vocabulary + skip-gram windows (Beam + tf.Transform).

    embedflow corpus --input GLOB [--input GLOB ...] --output DIR [options] [Beam options]
    python -m jobs.corpus ...   (the same)

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

Output directory (published only when complete, see `core.outputs`):

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
                                           vocabulary size, bytes per window and pair,
                                           the size of every window shard
                                           (windows.shard_bytes, by file name).
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

import json
import logging
import math
import time

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from core import files, outputs
from core.beam import counter_totals, pipeline_options
from core.main import main
from core.params import Params, new_parser, param, parse_known
from pipelines.corpus import FORMATS, NAMESPACE, MakeWindows, ReadCorpus, Tokenize, WriteWindows, reorder_vocabulary
from schemas import corpus as schema

_SNIFF_BYTES = 8192


class CorpusParams(Params):
    """`embedflow corpus`'s parameters; the `corpus` section of a run config."""

    # pylint: disable-next=redefined-builtin
    input: list[str] = param(repeat=True, min_length=1, metavar="GLOB", config=False,
                             help="text files to read (repeatable; local or gs://; .gz/.bz2)")
    output: str = param(metavar="DIR", config=False, help="output directory")
    format: str = param("auto", choices=FORMATS, config=False,
                        help="text: every line is text; wikiextractor/auto: drop <doc> markup lines")
    min_count: int = param(5, ge=1, help="leave out tokens seen fewer times")
    max_vocab: int | None = param(None, ge=1, help="keep at most this many tokens, the most frequent")
    window: int = param(5, ge=1, help="skip-gram window radius")
    sample: float = param(1e-3, ge=0, lt=1,
                          help="frequent-word subsampling threshold the trainer uses; 0 = off")
    max_span: int = param(1000, ge=2, help="longest run of ids in one record; longer paragraphs are split")
    max_line_chars: int = param(10_000_000, ge=1, help="skip (and count) lines longer than this")
    num_shards: int = param(0, ge=0, help="window shards; 0 = by input size, at least 4")
    batch_lines: int = param(512, ge=1, help="paragraphs per tf.Transform record batch")


PARAMS = CorpusParams


def parse_args(argv):
    """Splits the job's own flags from Beam's.

    Returns:
      (checked CorpusParams, list of Beam pipeline arguments).
    """
    parser = CorpusParams.add_flags(new_parser(
        "embedflow corpus", "Tokenize text into a vocabulary and skip-gram windows (TFRecord).",
        epilog="Other flags go to Beam (for example --runner, --direct_running_mode, "
               "--direct_num_workers, --project, --region, --temp_location)."))
    params, beam_args = parse_known(CorpusParams, parser, argv)
    outputs.check_output_path(params.output)
    return params, beam_args


def match_inputs(patterns):
    """Expands the globs before any work starts.

    Returns:
      Sorted, de-duplicated Beam `FileMetadata` of the matched files.

    Raises:
      FileNotFoundError: a glob matches nothing.
      ValueError: a file looks binary, or every file is empty.
    """
    found = {m.path: m for pattern in patterns for m in files.match_files(pattern, "--input")}
    matched = [found[p] for p in sorted(found)]
    for m in matched:
        if m.size_in_bytes == 0:
            continue
        with files.open_decompressed(m.path) as f:
            head = f.read(_SNIFF_BYTES)
        if b"\x00" in head:
            raise ValueError(
                f"--input {m.path} looks binary (NUL bytes in its first {_SNIFF_BYTES} bytes): "
                "pass only text files")
    if all(m.size_in_bytes == 0 for m in matched):
        raise ValueError(f"--input {' '.join(patterns)}: every matched file is empty")
    return matched


def build_analyze(pipeline, args, paths, transform_dir, temp_dir):
    """Adds the analysis pass: paragraphs -> tf.Transform transform_fn in `transform_dir`."""
    import tensorflow_transform.beam as tft_beam  # pylint: disable=import-outside-toplevel

    from pipelines.tokenize import make_preprocessing_fn  # pylint: disable=import-outside-toplevel

    with tft_beam.Context(temp_dir=temp_dir):
        dataset = (pipeline
                   | "ReadCorpus" >> ReadCorpus(files=paths, fmt=args.format,
                                                 max_line_chars=args.max_line_chars)
                   | "Tokenize" >> Tokenize(batch_lines=args.batch_lines))
        transform_fn = dataset | "AnalyzeVocabulary" >> tft_beam.AnalyzeDataset(
            make_preprocessing_fn(args.min_count))
        _ = transform_fn | "WriteTransformFn" >> tft_beam.WriteTransformFn(transform_dir)


def build_transform(pipeline, args, paths, transform_dir, temp_dir, oov_id, windows_prefix,
                    num_shards):
    """Adds the transform pass: paragraphs -> token ids -> window TFRecords."""
    import tensorflow_transform.beam as tft_beam  # pylint: disable=import-outside-toplevel

    with tft_beam.Context(temp_dir=temp_dir):
        dataset = (pipeline
                   | "ReadCorpus" >> ReadCorpus(files=paths, fmt=args.format,
                                                 max_line_chars=args.max_line_chars)
                   | "Tokenize" >> Tokenize(batch_lines=args.batch_lines))
        transform_fn = pipeline | "ReadTransformFn" >> tft_beam.ReadTransformFn(transform_dir)
        # (pa.RecordBatch with token_ids, passthrough dict)
        transformed, _ = (dataset, transform_fn) | "ApplyVocabulary" >> tft_beam.TransformDataset(
            output_record_batches=True)
        _ = (transformed
             | "MakeWindows" >> MakeWindows(oov_id=oov_id, window=args.window, max_span=args.max_span)
             | "WriteWindows" >> WriteWindows(prefix=windows_prefix, num_shards=num_shards))


def build(pipeline, args, paths, transform_dir, temp_dir, oov_id=None, windows_prefix=None,
          num_shards=4):
    """Adds one pass of the job to `pipeline`: analysis when `oov_id` is None, else transform."""
    if oov_id is None:
        build_analyze(pipeline, args, paths, transform_dir, temp_dir)
    else:
        build_transform(pipeline, args, paths, transform_dir, temp_dir, oov_id, windows_prefix,
                        num_shards)


def _counters(result):
    return counter_totals(result, NAMESPACE)


def windows_info(windows_dir, counters):
    """The `windows` entry of info.json: shards, their sizes (by file name) and bytes per unit.

    The trainer checks the shards against `shard_bytes` before it reads them.
    """
    shard_bytes = {}
    if outputs.list_files(windows_dir):
        found = FileSystems.match([windows_dir.rstrip("/") + "/*"])[0].metadata_list
        shard_bytes = {m.path.rsplit("/", 1)[-1]: m.size_in_bytes for m in found}
    total = sum(shard_bytes.values())
    return {
        "dir": schema.WINDOWS_DIR, "shards": len(shard_bytes), "bytes": total,
        "shard_bytes": shard_bytes, "records": counters.get("window_records", 0),
        "bytes_per_window": total / max(counters.get("windows", 0), 1),
        "bytes_per_pair_full_window": total / max(counters.get("pairs_full_window", 0), 1),
        "bytes_per_pair_dynamic_window": total / max(counters.get("pairs_expected_dynamic_window", 0), 1),
    }


def default_num_shards(metadata):
    total = sum(m.size_in_bytes for m in metadata)
    return max(4, min(1000, math.ceil(total / (64 << 20))))


def run(argv=None):
    """Runs the corpus job. Returns the output directory."""
    args, beam_args = parse_args(argv)
    metadata = match_inputs(args.input)
    file_info, fingerprint = outputs.fingerprint_files(metadata)
    paths = [(m.path, m.size_in_bytes) for m in metadata]
    num_shards = args.num_shards or default_num_shards(metadata)
    logging.info("corpus: %d input files (%d bytes), fingerprint %s", len(metadata),
                 sum(m.size_in_bytes for m in metadata), fingerprint[:12])

    with outputs.StagedOutput(args.output, inputs=[m.path for m in metadata]) as out:
        temp_dir = outputs.join(out.path, "tmp")
        started = time.time()
        with beam.Pipeline(options=pipeline_options(beam_args, "analyze")) as p:
            build(p, args, paths, out.path, temp_dir)
        counters = _counters(p.result)
        analyzed = time.time()
        vocab = reorder_vocabulary(out.path, args.max_vocab, args.min_count)
        oov_id = len(vocab)
        outputs.write_text(outputs.join(out.path, schema.VOCAB_FILE),
                             "".join(f"{t}\t{c}\n" for t, c in vocab))
        logging.info("corpus: vocabulary of %d tokens (min count %d); writing windows",
                     oov_id, args.min_count)

        windows_dir = outputs.join(out.path, schema.WINDOWS_DIR)
        with beam.Pipeline(options=pipeline_options(beam_args, "windows")) as p:
            build(p, args, paths, out.path, temp_dir, oov_id=oov_id,
                  windows_prefix=outputs.join(windows_dir, schema.WINDOWS_PREFIX),
                  num_shards=num_shards)
        for name, value in _counters(p.result).items():
            if name not in counters or name in ("tokens", "oov_tokens", "windows", "window_records")\
                    or name.startswith("pairs_"):
                counters[name] = value
        outputs.delete_tree(temp_dir)
        finished = time.time()

        if counters.get("windows", 0) == 0:
            raise ValueError("the corpus yields no in-vocabulary token: nothing to train on "
                             f"(inputs: {' '.join(args.input)})")
        info = {
            "job": "corpus",
            "inputs": {"patterns": args.input, "files": file_info, "fingerprint": fingerprint},
            "parameters": {**{k: getattr(args, k) for k in CorpusParams.config_keys()},
                           "format": args.format, "num_shards": num_shards},
            "counts": counters,
            "vocab_size": oov_id,
            "oov_id": oov_id,
            "vocab_tokens_covered": sum(c for _, c in vocab),
            "windows": windows_info(windows_dir, counters),
            "seconds": {"analyze": round(analyzed - started, 2),
                        "transform": round(finished - analyzed, 2)},
        }
        out.publish(info)
    logging.info("corpus: wrote %s\n%s", args.output, json.dumps(info["counts"], sort_keys=True))
    return args.output


if __name__ == "__main__":
    main("corpus", run)
