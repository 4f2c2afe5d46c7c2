"""What the labelled-example jobs (digits, sentiment) share: their I/O parameters and `run`.

Both jobs read labelled inputs into examples with Beam, check what the counters saw,
train, and publish one output (the contract is in each job's module docstring):

    list sources -> staged output -> Beam preprocessing (build) -> counters -> checks
      -> train -> info.json -> COMPLETED

The checks, after preprocessing and before training (errors name the flags):
- the train split (and an --eval-input split, or a hash-chosen one) holds examples;
- at most --max-skipped-fraction of what was read was skipped (the counts by reason
  are logged either way);
- the train split holds every class; a class under `trainer.common.RARE_CLASS_SHARE`
  of its even share is warned of.
"""

import logging
import math
import time
import typing

import apache_beam as beam
import pydantic

from core import outputs
from core.beam import counter_totals, pipeline_options
from core.params import Params, new_parser, param, parse_known
from pipelines.examples import class_counts
from schemas import examples as schema
from trainer import common

DEFAULT_EVAL_FRACTION = 0.1
BEAM_EPILOG = "Other flags go to Beam (for example --runner, --direct_num_workers, --project)."


class ExampleJobParams(Params):
    """The parameters every labelled-example job has; a job's Params subclass this."""

    input: list[str] = param(repeat=True, metavar="PATH", config=False, min_length=1,
                             help="training data: file, glob or folder (repeatable; local or gs://)")
    output: str = param(metavar="DIR", config=False, help="output directory")
    eval_input: list[str] | None = param(None, repeat=True, metavar="PATH", group="held_out",
                                         config=False, help="eval data, same format (repeatable)")
    eval_fraction: float | None = param(
        None, gt=0, lt=1, group="held_out",
        help=f"hold out this fraction of --input for eval ({DEFAULT_EVAL_FRACTION} unless "
             "another way to evaluate is given)")
    max_skipped_fraction: float = param(
        0.1, ge=0, le=1, help="refuse the input when more than this share of what was read is "
                              "skipped (unreadable, unlabelled, ...); 1 accepts any")

    @pydantic.model_validator(mode="after")
    def _held_out_default(self):
        # --eval-fraction's group: --eval-input, and --folds where a job has it.
        group = ["eval_fraction", *self.group_members("eval_fraction")]
        given = [self.flag_of(n) for n in group if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(f"give only one of {', '.join(given)}")
        if not given:
            self.eval_fraction = DEFAULT_EVAL_FRACTION
        return self

    def input_info(self):
        """info.json's "inputs", without the files (every job declares its `format`)."""
        return {"format": self.format, "patterns": self.input}

    def info_parameters(self):
        """info.json's "parameters": the values of every `run` config key."""
        return {k: getattr(self, k) for k in self.config_keys()}


def parse_args(params_class, argv, prog, description):
    """Splits a job's own flags from Beam's and checks them.

    Returns:
      (checked parameters, list of Beam pipeline arguments).
    """
    parser = params_class.add_flags(new_parser(prog, description, BEAM_EPILOG))
    params, beam_args = parse_known(params_class, parser, argv)
    outputs.check_output_path(params.output)
    return params, beam_args


class Job(typing.NamedTuple):
    """What one labelled-example job plugs into `run`."""
    name: str  # the command, info.json's "job" and the log prefix: "digits"
    namespace: str  # of its Beam counters
    item: str  # what its inputs hold, for messages: "digit", "text"
    classes: tuple  # class names, in class-index order
    classes_named_by: str  # for messages: "--labels neg,pos"
    split_by_hash: bool  # Beam gives the --input examples the eval split (--eval-fraction)
    list_sources: typing.Callable  # (patterns, split or None, flag) -> (sources, FileMetadata)
    build: typing.Callable  # (pipeline, sources, examples_dir) -> None
    train: typing.Callable  # (examples_dir, counts, output_dir) -> report dict for info.json
    inputs: tuple = ()  # output directories of other jobs it reads
    info: dict = {}  # info.json entries of its own (corpus, embeddings)


def run(job, params, beam_args):
    """Runs a labelled-example job (see the module docstring). Returns the output directory."""
    input_split = None if job.split_by_hash and not params.eval_input else schema.TRAIN
    sources, metadata = job.list_sources(params.input, input_split, "--input")
    eval_metadata = []
    if params.eval_input:
        eval_sources, eval_metadata = job.list_sources(params.eval_input, schema.EVAL,
                                                       "--eval-input")
        sources += eval_sources
    file_info, fingerprint = outputs.fingerprint_files(metadata)
    eval_file_info, eval_fingerprint = outputs.fingerprint_files(eval_metadata)
    logging.info("%s: %d %s sources, fingerprint %s", job.name, len(sources), params.format,
                 fingerprint[:12])

    inputs = [m.path for m in metadata + eval_metadata] + list(job.inputs)
    with outputs.StagedOutput(params.output, inputs=inputs) as out:
        examples_dir = outputs.join(out.path, schema.EXAMPLES_DIR)
        started = time.time()
        with beam.Pipeline(options=pipeline_options(beam_args, job.name)) as p:
            job.build(p, sources, examples_dir)
        counts = counter_totals(p.result, job.namespace)
        preprocessed = time.time()
        check_counts(job, params, counts)
        report = job.train(examples_dir, counts, out.path)
        out.publish({
            "job": job.name,
            "inputs": {**params.input_info(), "files": file_info, "fingerprint": fingerprint},
            "eval_inputs": ({"patterns": params.eval_input, "files": eval_file_info,
                             "fingerprint": eval_fingerprint} if params.eval_input else None),
            **job.info,
            "parameters": params.info_parameters(),
            "counts": counts,
            "examples": {"dir": schema.EXAMPLES_DIR, "suffix": schema.EXAMPLES_SUFFIX,
                         "compression": schema.EXAMPLES_COMPRESSION},
            "model": report,
            "seconds": {"preprocess": round(preprocessed - started, 2), "train": report["seconds"]},
        })
    logging.info("%s: wrote %s", job.name, params.output)
    return params.output


def check_counts(job, params, counts):
    """The checks of the module docstring, on the counters of the preprocessing."""
    log_counts(job, counts)
    check_splits(job, params, counts)
    check_skipped(job, params, counts)
    common.check_classes(class_counts(counts, schema.TRAIN, len(job.classes)), job.classes,
                         "the train split", named_by=job.classes_named_by)
    eval_counts = class_counts(counts, schema.EVAL, len(job.classes))
    if sum(eval_counts):
        # The trainer refuses held-out sets without a class where it must (sentiment).
        common.check_classes(eval_counts, job.classes, "the eval split",
                             named_by=job.classes_named_by, required=False)


def log_counts(job, counts):
    """Logs what was read: examples per split and class, and the skips by reason."""
    for split in schema.SPLITS:
        per_class = class_counts(counts, split, len(job.classes))
        if sum(per_class):
            logging.info("%s: %s split: %d examples (per class: %s)", job.name, split,
                         sum(per_class), ", ".join(f"{c} {n}" for c, n in zip(job.classes, per_class)))
    skipped = _skipped(counts)
    if skipped:
        logging.warning("%s: skipped %d %ss: %s", job.name, sum(skipped.values()), job.item,
                        ", ".join(f"{reason} {n}" for reason, n in sorted(skipped.items())))


def _skipped(counts):
    return {k.removeprefix("skipped_"): v for k, v in counts.items() if k.startswith("skipped_") and v}


def check_splits(job, params, counts):
    """Raises when a split came out empty, saying what the counters saw."""
    seen = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "nothing read"
    if not counts.get(f"examples_{schema.TRAIN}"):
        raise ValueError(f"the train split is empty ({seen}): --input {' '.join(params.input)} "
                         f"holds no usable {job.item}")
    if params.eval_input and not counts.get(f"examples_{schema.EVAL}"):
        raise ValueError(f"the eval split is empty ({seen}): --eval-input "
                         f"{' '.join(params.eval_input)} holds no usable {job.item}")
    if job.split_by_hash and not counts.get(f"examples_{schema.EVAL}"):
        raise ValueError(f"the eval split is empty ({seen}): raise --eval-fraction "
                         f"(now {params.eval_fraction})")


def check_skipped(job, params, counts):
    """Raises when more than --max-skipped-fraction of what was read was skipped.

    What was read is every example written plus every element skipped: each read element
    ends as one or the other.
    """
    skipped = _skipped(counts)
    total = sum(skipped.values()) + sum(counts.get(f"examples_{s}", 0) for s in schema.SPLITS)
    fraction = sum(skipped.values()) / total if total else 0.0
    if fraction > params.max_skipped_fraction:
        reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(skipped.items()))
        raise ValueError(
            f"{sum(skipped.values())} of the {total} {job.item}s read were skipped ({fraction:.1%}; "
            f"{reasons}), more than --max-skipped-fraction {params.max_skipped_fraction}: check "
            f"--format and the inputs (the reasons say what was wrong), or pass "
            f"--max-skipped-fraction {math.ceil(round(fraction * 100, 6)) / 100:g} to train on the rest")
