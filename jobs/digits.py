"""Digits job: 32x32 digit images -> examples (Beam) -> an MLP such as "1024-512-10" (Keras).

    embedflow digits --input PATH [--input PATH ...] --format optdigits|mnist|png --output DIR
                     [--layers 1024-512-10] [--epochs N] [--batch-size N]
                     [--eval-input PATH ... | --eval-fraction F] [--seed N]
                     [--learning-rate R] [--dropout P] [--patience N] [...] [Beam options]
    python -m jobs.digits ...   (the same)

Inputs, their errors and the split: `pipelines/digits.py`.

Reproducibility: the splits and their contents are deterministic, and `--seed` fixes the
initial weights, dropout and shuffling; but Beam spreads examples over the shard files in
an order that changes from run to run, so two trainings see the examples in different
orders and their accuracies differ slightly (about 0.3 points on optdigits' test set).

Output directory (published only when complete, see `core.outputs`):

    examples/{train,eval}-SSSSS-of-NNNNN.tfrecord.gz
                        GZIP TFRecords of tf.train.Example, spec schemas.digits.FEATURE_SPEC:
                        "image", 1024 floats in [0, 1] (the 32x32 image row by row, 0 is
                        background, 1 is ink), and "label", an int64 in [0, 10).
    model/              SavedModel (Keras 3 export), needs nothing else to serve. Endpoints:
                        `serve` float32 [batch, 1024] -> class probabilities [batch, 10]
                        (also the `serving_default` signature); `serve_images` float32
                        [batch, 32, 32] -> the same.
    metrics.json        eval and train accuracy and their gap, per-class precision and recall,
                        confusion matrix (rows: true class, columns: predicted class),
                        learning history.
    confusion_matrix.png, learning_curves.png
    info.json           inputs and fingerprints, counters, parameters, parameter count and
                        training examples per parameter, timings.
    COMPLETED           written last.
"""

import argparse
import logging
import time

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from core import outputs
from core.beam import counter_totals, pipeline_options
from core.main import main
from pipelines.digits import FORMATS, NAMESPACE, AssignSplit, ReadDigits, WriteExamples, list_sources
from schemas import digits as schema


def parse_args(argv):
    """Splits the job's own flags from Beam's.

    Returns:
      (job args namespace, list of Beam pipeline arguments).
    """
    parser = argparse.ArgumentParser(
        prog="embedflow digits",
        description="Turn 32x32 digit images into examples and train an MLP on them.",
        epilog="Other flags go to Beam (for example --runner, --direct_num_workers, --project).")
    parser.add_argument("--input", action="append", required=True, metavar="PATH",
                        help="training images: file, glob or folder (repeatable; local or gs://)")
    parser.add_argument("--format", choices=FORMATS, required=True,
                        help="optdigits bitmaps, MNIST IDX files, or a folder of PNGs by label")
    parser.add_argument("--output", required=True, metavar="DIR", help="output directory")
    held_out = parser.add_mutually_exclusive_group()
    held_out.add_argument("--eval-input", action="append", metavar="PATH",
                          help="eval images, same format (repeatable)")
    held_out.add_argument("--eval-fraction", type=float, default=None,
                          help="hold out this fraction of --input for eval (default 0.1)")
    parser.add_argument("--layers", default="1024-512-10",
                        help="MLP layer sizes, input to output (default 1024-512-10)")
    parser.add_argument("--epochs", type=int, default=30, help="most epochs (default 30)")
    parser.add_argument("--batch-size", type=int, default=128, help="batch size (default 128)")
    parser.add_argument("--learning-rate", type=float, default=1e-3,
                        help="Adam learning rate (default 1e-3)")
    parser.add_argument("--dropout", type=float, default=0.5,
                        help="dropout after every hidden layer while training (default 0.5; 0 = off)")
    parser.add_argument("--lr-decay-factor", type=float, default=0.2,
                        help="multiply the learning rate by this when eval loss stalls (default 0.2; 1 = off)")
    parser.add_argument("--lr-decay-patience", type=int, default=1,
                        help="epochs without a lower eval loss before that (default 1)")
    parser.add_argument("--patience", type=int, default=4,
                        help="stop after this many epochs without a lower eval loss (default 4)")
    parser.add_argument("--shuffle-buffer", type=int, default=10_000,
                        help="training examples shuffled together (default 10,000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and shuffling")
    parser.add_argument("--num-shards", type=int, default=4,
                        help="example files per split (default 4)")
    args, beam_args = parser.parse_known_args(argv)
    if args.eval_input is None and args.eval_fraction is None:
        args.eval_fraction = 0.1
    _validate(args)
    return args, beam_args


def _validate(args):
    checks = [
        (args.eval_fraction is None or 0 < args.eval_fraction < 1,
         f"--eval-fraction must be in (0, 1), got {args.eval_fraction}"),
        (args.num_shards >= 1, f"--num-shards must be >= 1, got {args.num_shards}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    outputs.check_output_path(args.output)


def build(pipeline, args, sources, examples_dir):
    """Adds the preprocessing to `pipeline`: sources -> example TFRecords in `examples_dir`."""
    _ = (pipeline
         | "ReadDigits" >> ReadDigits(sources=sources)
         | "AssignSplit" >> AssignSplit(eval_fraction=args.eval_fraction)
         | "WriteExamples" >> WriteExamples(examples_dir=examples_dir, num_shards=args.num_shards))


def _counters(result):
    return counter_totals(result, NAMESPACE)


def _check_splits(counts, args):
    """Raises when a split came out empty, saying what the counters saw."""
    seen = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "nothing read"
    if not counts.get(f"examples_{schema.TRAIN}"):
        raise ValueError(f"the train split is empty ({seen}): --input {' '.join(args.input)} "
                         "holds no usable digit")
    if not counts.get(f"examples_{schema.EVAL}"):
        hint = (f"--eval-input {' '.join(args.eval_input)} holds no usable digit"
                if args.eval_input else f"raise --eval-fraction (now {args.eval_fraction})")
        raise ValueError(f"the eval split is empty ({seen}): {hint}")


def example_files(examples_dir, split):
    """The sorted example files of one split."""
    pattern = outputs.join(examples_dir, f"{split}-*{schema.EXAMPLES_SUFFIX}")
    return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)


def run(argv=None):
    """Runs the digits job: preprocessing, then training. Returns the output directory."""
    from trainer import digits as trainer  # pylint: disable=import-outside-toplevel

    args, beam_args = parse_args(argv)
    config = trainer.config_from_args(args)  # a bad --layers fails before any work
    sources, metadata = list_sources(args.input, args.format,
                                     schema.TRAIN if args.eval_input else None, "--input")
    if args.eval_input:
        eval_sources, eval_metadata = list_sources(args.eval_input, args.format, schema.EVAL,
                                                   "--eval-input")
        sources += eval_sources
    else:
        eval_metadata = []
    file_info, fingerprint = outputs.fingerprint_files(metadata)
    eval_file_info, eval_fingerprint = outputs.fingerprint_files(eval_metadata)
    logging.info("digits: %d %s sources, fingerprint %s", len(sources), args.format, fingerprint[:12])

    inputs = [m.path for m in metadata + eval_metadata]
    with outputs.StagedOutput(args.output, inputs=inputs) as out:
        examples_dir = outputs.join(out.path, schema.EXAMPLES_DIR)
        started = time.time()
        with beam.Pipeline(options=pipeline_options(beam_args, "digits")) as p:
            build(p, args, sources, examples_dir)
        counts = _counters(p.result)
        preprocessed = time.time()
        _check_splits(counts, args)
        report = trainer.train(
            config,
            train_files=example_files(examples_dir, schema.TRAIN),
            eval_files=example_files(examples_dir, schema.EVAL),
            train_count=counts[f"examples_{schema.TRAIN}"],
            eval_count=counts[f"examples_{schema.EVAL}"],
            output_dir=out.path)
        info = {
            "job": "digits",
            "inputs": {"format": args.format, "patterns": args.input, "files": file_info,
                       "fingerprint": fingerprint},
            "eval_inputs": ({"patterns": args.eval_input, "files": eval_file_info,
                             "fingerprint": eval_fingerprint} if args.eval_input else None),
            "parameters": {"eval_fraction": args.eval_fraction, "num_shards": args.num_shards,
                           **trainer.config_dict(config)},
            "counts": counts,
            "examples": {"dir": schema.EXAMPLES_DIR, "suffix": schema.EXAMPLES_SUFFIX,
                         "compression": schema.EXAMPLES_COMPRESSION},
            "model": report,
            "seconds": {"preprocess": round(preprocessed - started, 2),
                        "train": report["seconds"]},
        }
        out.publish(info)
    logging.info("digits: wrote %s", args.output)
    return args.output


if __name__ == "__main__":
    main("digits", run)
