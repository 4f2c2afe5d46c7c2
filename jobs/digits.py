"""Digits job: 32x32 digit images -> examples (Beam) -> an MLP such as "1024-512-10" (Keras).

    embedflow digits --input PATH [--input PATH ...] --format optdigits|mnist|png --output DIR
                     [--layers 1024-512-10] [--epochs N] [--batch-size N]
                     [--eval-input PATH ... | --eval-fraction F] [--seed N]
                     [--learning-rate R] [--dropout P] [--patience N]
                     [--max-skipped-fraction F] [...] [Beam options]
    python -m jobs.digits ...   (the same)

Inputs, their errors and the split: `pipelines/digits.py`.

Reproducibility: the splits and their contents are deterministic, and `--seed` fixes the
initial weights, dropout and shuffling; but Beam spreads examples over the shard files in
an order that changes from run to run, so two trainings see the examples in different
orders and their accuracies differ slightly (about 0.3 points on optdigits' test set).

Checks after preprocessing (see `jobs/labelled.py`): no empty split, at most
`--max-skipped-fraction` of the digits read skipped, every digit in the train split.

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
    info.json           inputs and fingerprints, counters (examples per split and class,
                        skips by reason), parameters, parameter count and training
                        examples per parameter, timings.
    COMPLETED           written last.
"""

from core.beam import counter_totals
from core.main import main
from core.params import param
from jobs import labelled
from pipelines.digits import FORMATS, NAMESPACE, AssignSplit, ReadDigits, encode_example, list_sources
from pipelines.examples import WriteExamples, example_files
from schemas import digits as schema
from trainer import digits as trainer

CLASSES = tuple(range(schema.NUM_CLASSES))


class DigitsParams(trainer.DigitsConfig, labelled.ExampleJobParams):
    """`embedflow digits`'s parameters; the `digits` section of a run config."""

    format: str = param(choices=FORMATS, config=False,
                        help="optdigits bitmaps, MNIST IDX files, or a folder of PNGs by label")
    num_shards: int = param(4, ge=1, help="example files per split")

    def info_parameters(self):
        return {**super().info_parameters(), "layer_sizes": list(self.layer_sizes)}


PARAMS = DigitsParams
DESCRIPTION = "Turn 32x32 digit images into examples and train an MLP on them."


def parse_args(argv):
    """Splits the job's own flags (checked DigitsParams) from Beam's: (params, beam_args)."""
    return labelled.parse_args(DigitsParams, argv, "embedflow digits", DESCRIPTION)


def build(pipeline, params, sources, examples_dir):
    """Adds the preprocessing to `pipeline`: sources -> example TFRecords in `examples_dir`."""
    _ = (pipeline
         | "ReadDigits" >> ReadDigits(sources=sources)
         | "AssignSplit" >> AssignSplit(eval_fraction=params.eval_fraction)
         # (split, image, label) -> examples/{split}-*.tfrecord.gz
         | "WriteExamples" >> WriteExamples(examples_dir=examples_dir, num_shards=params.num_shards,
                                            encode=encode_example, namespace=NAMESPACE))


def counters(result):
    """The job's counter totals of a finished pipeline."""
    return counter_totals(result, NAMESPACE)


def run(argv=None):
    """Runs the digits job: preprocessing, then training. Returns the output directory."""
    params, beam_args = parse_args(argv)

    def train(examples_dir, counts, output_dir):
        return trainer.train(
            params, train_files=example_files(examples_dir, schema.TRAIN),
            eval_files=example_files(examples_dir, schema.EVAL),
            train_count=counts[f"examples_{schema.TRAIN}"],
            eval_count=counts[f"examples_{schema.EVAL}"], output_dir=output_dir)

    job = labelled.Job(
        name="digits", namespace=NAMESPACE, item="digit", classes=CLASSES,
        classes_named_by=f"the digits 0 ... {schema.NUM_CLASSES - 1}", split_by_hash=True,
        list_sources=lambda patterns, split, flag: list_sources(patterns, params.format, split, flag),
        build=lambda pipeline, sources, examples_dir: build(pipeline, params, sources, examples_dir),
        train=train)
    return labelled.run(job, params, beam_args)


if __name__ == "__main__":
    main("digits", run)
