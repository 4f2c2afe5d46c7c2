"""Sentiment job: labelled text -> token-id examples (Beam, corpus transform_fn) -> classifier.

    embedflow sentiment --input PATH [--input PATH ...] --format tsv|csv|polarity|folders
                        --corpus DIR --embeddings DIR --output DIR
                        [--hidden 64] [--freeze | --fine-tune] [--fine-tune-rate 0.1]
                        [--folds K | --eval-input PATH ... | --eval-fraction F]
                        [--compare-scratch] [--curve-sizes 100,300,1000,3000] [--seed N]
                        [--labels neg,pos] [--label-column label] [--text-column text]
                        [--encoding ENC] [...] [Beam options]
    python -m jobs.sentiment ...   (the same)

`--corpus` is a corpus job output and `--embeddings` an embedding trainer output made
from it (both refused without COMPLETED; their vocabularies must be the same). Every
text is tokenized by the corpus job's own `transform_fn`, so its ids are exactly the
rows of the trained vectors.

Inputs, their formats and counted skips: `pipelines/sentiment.py`.

Evaluation: `--folds K` gives K-fold cross-validation over `--input` (the fold of an
example is its key modulo K, the key being the sha256 of its text: deterministic and
independent of order and sharding, and identical texts share a fold); `--eval-input`
texts are the eval set; otherwise `--eval-fraction F` (default 0.1) of `--input`,
chosen by the same key, is held out. `trainer/sentiment.py` documents the training.

Output directory (published only when complete, see `core.outputs`):

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
import logging
import time

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from core import outputs
from core.beam import counter_totals, pipeline_options
from core.main import main
from pipelines.sentiment import (FORMATS, NAMESPACE, ReadLabelledText, TokenizeText, WriteExamples,
                                 parse_labels,
                                 list_sources)
from schemas import corpus as corpus_schema
from schemas import embeddings as embeddings_schema
from schemas import sentiment as schema


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
    outputs.check_output_path(args.output)


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
    return counter_totals(result, NAMESPACE)


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
    pattern = outputs.join(examples_dir, f"{split}-*{schema.EXAMPLES_SUFFIX}")
    return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)


def check_inputs(corpus_dir, embeddings_dir):
    """Refuses incomplete or mismatched --corpus/--embeddings before any work.

    Returns:
      (corpus info.json, embeddings info.json, corpus vocabulary size).

    Raises:
      FileNotFoundError: a directory is missing or has no COMPLETED marker.
      ValueError: the embeddings were not trained on this corpus's vocabulary.
    """
    corpus_info = outputs.require_completed(corpus_dir, "--corpus", corpus_schema.PRODUCER)
    embeddings_info = outputs.require_completed(embeddings_dir, "--embeddings",
                                                  embeddings_schema.PRODUCER)
    corpus_vocab = [line.split("\t", 1)[0] for line in outputs.read_text(
        outputs.join(corpus_dir, corpus_schema.VOCAB_FILE)).splitlines()]
    vector_vocab = [line.split("\t", 1)[0] for line in outputs.read_text(
        outputs.join(embeddings_dir, embeddings_schema.VOCAB_TXT)).splitlines()]
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
    file_info, fingerprint = outputs.fingerprint_files(metadata)
    eval_file_info, eval_fingerprint = outputs.fingerprint_files(eval_metadata)
    logging.info("sentiment: %d %s sources, fingerprint %s", len(sources), args.format,
                 fingerprint[:12])

    inputs = [m.path for m in metadata + eval_metadata] + [args.corpus, args.embeddings]
    with outputs.StagedOutput(args.output, inputs=inputs) as out:
        examples_dir = outputs.join(out.path, schema.EXAMPLES_DIR)
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
    main("sentiment", run)
