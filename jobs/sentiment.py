"""Sentiment job: labelled text -> token-id examples (Beam, corpus transform_fn) -> classifier.

    embedflow sentiment --input PATH [--input PATH ...] --format tsv|csv|polarity|folders
                        --corpus DIR --embeddings DIR --output DIR
                        [--hidden 64] [--freeze | --fine-tune] [--fine-tune-rate 0.1] [--adapt-epochs 0]
                        [--folds K | --eval-input PATH ... | --eval-fraction F]
                        [--compare-scratch] [--curve-sizes 100,300,1000,3000] [--seed N]
                        [--labels neg,pos] [--label-column label] [--text-column text]
                        [--encoding ENC] [--max-skipped-fraction F] [...] [Beam options]
    python -m jobs.sentiment ...   (the same)

`--corpus` is a corpus job output and `--embeddings` an embedding trainer output made
from it (both refused without COMPLETED; their vocabularies must be the same). Every
text is tokenized by the corpus job's own `transform_fn`, so its ids are exactly the
rows of the trained vectors.

Inputs, their formats and counted skips: `pipelines/sentiment.py`. Checks after
preprocessing (see `jobs/labelled.py`): no empty split, at most `--max-skipped-fraction`
of the texts read skipped, every class of `--labels` in the train split; the trainer
also refuses a held-out set or a training fold without every class.

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
    info.json           inputs and fingerprints, corpus and embeddings used, counters
                        (examples per split and class, skips by reason), parameters,
                        parameter counts, timings.
    COMPLETED           written last.
"""

import pydantic

from core import outputs
from core.beam import counter_totals
from core.main import main
from core.params import param
from jobs import labelled
from pipelines.examples import WriteExamples, example_files
from pipelines.sentiment import (FORMATS, NAMESPACE, ReadLabelledText, TokenizeText, encode_example,
                                 list_sources, parse_labels)
from schemas import corpus as corpus_schema
from schemas import embeddings as embeddings_schema
from schemas import sentiment as schema
from trainer import sentiment as trainer
from trainer.skipgram import read_vocab

# Text encodings by --format, when --encoding is not given.
ENCODINGS = {"polarity": "latin-1"}
DEFAULT_ENCODING = "utf-8"


class SentimentParams(trainer.SentimentConfig, labelled.ExampleJobParams):
    """`embedflow sentiment`'s parameters; the `sentiment` section of a run config."""

    format: str = param(choices=FORMATS, config=False,
                        help="tsv/csv rows, rt-polarity .pos/.neg files, or a folder per label")
    corpus: str = param(metavar="DIR", config=False,
                        help="corpus job output: its transform_fn tokenizes the texts")
    embeddings: str = param(metavar="DIR", config=False,
                            help="embedding trainer output made from --corpus")
    folds: int | None = param(None, ge=2, metavar="K", group="held_out",
                              help="K-fold cross-validation over --input")
    labels: str = param(",".join(schema.DEFAULT_LABELS),
                        help="class names in class-index order, comma-separated")
    label_column: str = param("label", help="tsv/csv: label column, a header name or 0-based index")
    text_column: str = param("text", help="tsv/csv: text column, a header name or 0-based index")
    encoding: str | None = param(
        None, help="text encoding (" + ", ".join(f"{e} for {f}" for f, e in ENCODINGS.items())
                   + f", {DEFAULT_ENCODING} otherwise)")
    compare_scratch: bool = param(
        False, help="also train the same model from random embeddings on the same splits")
    curve_sizes: str = param("100,300,1000,3000",
                             help="training-set sizes of the learning curve, comma-separated; the "
                                  "full set is always added; 'none' skips the curve")
    num_shards: int = param(2, ge=1, help="example files per split")

    @pydantic.field_validator("labels")
    @classmethod
    def _check_labels(cls, text):
        parse_labels(text)
        return text

    @pydantic.field_validator("curve_sizes")
    @classmethod
    def _check_curve_sizes(cls, text):
        parse_curve_sizes(text)
        return text

    @pydantic.field_validator("encoding")
    @classmethod
    def _check_encoding(cls, encoding):
        if encoding is not None:
            check_encoding(encoding)
        return encoding

    @pydantic.model_validator(mode="after")
    def _encoding_default(self):
        if self.encoding is None:
            self.encoding = ENCODINGS.get(self.format, DEFAULT_ENCODING)
        return self

    @property
    def class_names(self):
        return parse_labels(self.labels)

    @property
    def curve_size_values(self):
        return parse_curve_sizes(self.curve_sizes)

    def input_info(self):
        return {**super().input_info(), "encoding": self.encoding}

    def info_parameters(self):
        return {**super().info_parameters(), "labels": list(self.class_names),
                "curve_sizes": list(self.curve_size_values)}


PARAMS = SentimentParams
DESCRIPTION = "Classify text by averaged pretrained word embeddings, tokenized like the corpus."


def parse_args(argv):
    """Splits the job's own flags (checked SentimentParams) from Beam's: (params, beam_args)."""
    return labelled.parse_args(SentimentParams, argv, "embedflow sentiment", DESCRIPTION)


def parse_curve_sizes(text):
    """`--curve-sizes` -> sorted tuple of positive ints ('none' or '' -> ())."""
    text = str(text).strip()
    if text.lower() in ("", "none"):
        return ()
    try:
        sizes = sorted({int(p.replace("_", "")) for p in text.split(",")})
    except ValueError:
        raise ValueError(f"{text!r}: expected sizes such as '100,300,1000'") from None
    if sizes[0] < 2:
        raise ValueError(f"{text!r}: every size must be >= 2")
    return tuple(sizes)


def check_encoding(encoding):
    """Refuses a codec Python does not know or that does not write ASCII line ends."""
    try:
        ascii_compatible = "\n,\t".encode(encoding) == b"\n,\t"
    except LookupError:
        raise ValueError(f"{encoding!r} is not a codec Python knows") from None
    if not ascii_compatible:
        raise ValueError(f"{encoding}: only encodings that write line ends, commas and tabs as "
                         "ASCII bytes are supported (utf-8, latin-1, cp1252, ...)")


def build(pipeline, params, sources, examples_dir):
    """Adds the preprocessing to `pipeline`: sources -> example TFRecords in `examples_dir`."""
    splits = (schema.TRAIN, schema.EVAL) if params.eval_input else (schema.TRAIN,)
    _ = (pipeline
         | "ReadLabelledText" >> ReadLabelledText(
             sources=sources, labels=params.class_names, encoding=params.encoding,
             label_column=params.label_column, text_column=params.text_column)
         | "TokenizeText" >> TokenizeText(corpus_dir=params.corpus)
         # (split, label, ids, key) -> examples/{split}-*.tfrecord.gz
         | "WriteExamples" >> WriteExamples(examples_dir=examples_dir, num_shards=params.num_shards,
                                            encode=encode_example, namespace=NAMESPACE,
                                            splits=splits))


def counters(result):
    """The job's counter totals of a finished pipeline."""
    return counter_totals(result, NAMESPACE)


def check_inputs(corpus_dir, embeddings_dir):
    """Refuses incomplete or mismatched --corpus/--embeddings before any work.

    Returns:
      (corpus info.json, embeddings info.json, corpus counts: int64 [vocabulary size]).

    Raises:
      FileNotFoundError: a directory is missing or has no COMPLETED marker.
      ValueError: the embeddings were not trained on this corpus's vocabulary.
    """
    corpus_info = outputs.require_completed(corpus_dir, "--corpus", corpus_schema.PRODUCER)
    embeddings_info = outputs.require_completed(embeddings_dir, "--embeddings",
                                                  embeddings_schema.PRODUCER)
    corpus_vocab, corpus_counts = read_vocab(corpus_dir)
    vector_vocab = [line.split("\t", 1)[0] for line in outputs.read_text(
        outputs.join(embeddings_dir, embeddings_schema.VOCAB_TXT)).splitlines()]
    if corpus_vocab != vector_vocab:
        raise ValueError(
            f"--embeddings {embeddings_dir} were not trained on --corpus {corpus_dir}: their "
            f"vocabularies differ ({len(vector_vocab)} vs {len(corpus_vocab)} words). Pass the "
            "corpus directory the embeddings were trained from.")
    return corpus_info, embeddings_info, corpus_counts


def run(argv=None):
    """Runs the sentiment job: preprocessing, then training. Returns the output directory."""
    params, beam_args = parse_args(argv)
    corpus_info, embeddings_info, corpus_counts = check_inputs(params.corpus, params.embeddings)
    vocab_size = len(corpus_counts)
    evaluation = trainer.Evaluation(folds=params.folds, eval_fraction=params.eval_fraction,
                                    compare_scratch=params.compare_scratch,
                                    curve_sizes=params.curve_size_values)

    def train(examples_dir, counts, output_dir):
        eval_files = example_files(examples_dir, schema.EVAL) if params.eval_input else None
        data = trainer.Data(
            examples=trainer.load_examples(example_files(examples_dir, schema.TRAIN)),
            eval_examples=trainer.load_examples(eval_files) if eval_files else None,
            vectors=trainer.load_vectors(params.embeddings, vocab_size), labels=params.class_names,
            counts=corpus_counts)
        return trainer.train(params, data, evaluation, corpus_dir=params.corpus,
                             output_dir=output_dir)

    job = labelled.Job(
        name="sentiment", namespace=NAMESPACE, item="text", classes=params.class_names,
        classes_named_by=f"--labels {params.labels}", split_by_hash=False,
        list_sources=lambda patterns, split, flag: list_sources(
            patterns, params.format, split, flag, params.class_names),
        build=lambda pipeline, sources, examples_dir: build(pipeline, params, sources, examples_dir),
        train=train, inputs=(params.corpus, params.embeddings),
        info={"corpus": {"dir": params.corpus, "fingerprint": corpus_info["inputs"]["fingerprint"],
                         "completed_at": corpus_info.get("completed_at"), "vocab_size": vocab_size},
              "embeddings": {"dir": params.embeddings,
                             "completed_at": embeddings_info.get("completed_at"),
                             "parameters": embeddings_info.get("parameters")}})
    return labelled.run(job, params, beam_args)


if __name__ == "__main__":
    main("sentiment", run)
