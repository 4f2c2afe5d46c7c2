"""The whole chain in one command: versioned runs, reuse by fingerprint, a report, promotion.

    embedflow run [--config FILE] [--output-root DIR] [--force] [--warm-start-from RUN]
                  [--set SECTION.KEY=VALUE ...] [--stages LIST] [--run-name NAME]

Runs corpus -> train -> evaluate -> digits -> sentiment, writes a report, then promotes
the run when every quality gate passes. With no arguments it runs on the bundled
sample (`sample/`) into `runs/` under the current directory.

With `inputs.pretrained_vectors` (and `inputs.pretrained_format`) set, an `import` stage
(`embedflow import-vectors`, its parameters in the config's `import` section) replaces
corpus and train: import -> evaluate -> digits -> sentiment. The import output is both
the run's embeddings (in `embeddings/`) and its tokenizer, so sentiment takes it as
`--corpus` and `--embeddings`, and no stage reads a corpus. Its fingerprint covers the
vectors file (path, size, modification time), the format, the coverage text and the
`import` parameters. The `train` step of `--stages` then runs the import (so does `import`).

Layout under ROOT (`--output-root`, local or `gs://`):

    runs/<UTC time>-<short id>/          one run
        corpus/ embeddings/ evaluation/ digits/ sentiment/
                                         one job output per stage (info.json, COMPLETED);
                                         embeddings/ is train's or import's
        <stage>.stage.json               the stage's fingerprint and whether it ran or was
                                         reused (and from which run); written after the
                                         stage's COMPLETED
        report.md, report.html, report/  metrics tables and plots
        manifest.json                    lineage: config, inputs and their fingerprints,
                                         stage fingerprints, metrics, gates, library
                                         versions, git commit; written last
    latest                               the name of the promoted run, one line; replaced
                                         atomically (a temp file + os.replace locally, one
                                         object write on gs://), only by a run whose gates
                                         all pass

Reuse: a stage's fingerprint is a sha256 over its parameters, the fingerprints of its
input files (path, size, modification time) and its upstream stages' fingerprints.
When an earlier run under ROOT holds a COMPLETED output of a stage with the same
fingerprint, that output is copied into the new run instead of recomputed (`--force`
recomputes). Copying keeps every run self-contained: deleting an old run never breaks
a newer one, and `latest` always names a complete directory. Paths inside a copied
stage's info.json still name the run that computed it.

Config (YAML or JSON; see `embedflow/config.py` for every key and its default): sections
`inputs`, `corpus`, `train`, `import`, `evaluate`, `digits`, `sentiment`, `gates`. A key the
schema does not know, or a value of the wrong type or range, is an error naming the
key before any work starts. Relative paths resolve against the current directory.
`--set train.epochs=1` overrides one key (the value is read as YAML).

Cloud use: `--stages corpus` with `--run-name NAME` runs only that stage into run NAME,
so each stage can run where it belongs (Dataflow, Vertex AI) and a last
`--stages report,promote` step promotes; stages not selected must already be complete
in the run or reusable by fingerprint.
"""

import argparse
import dataclasses
import importlib
import importlib.util
import json
import logging
import os
import time

from apache_beam.io.filesystems import FileSystems

from core import outputs
from core.main import main
from embedflow import config as config_lib
from embedflow.lineage import (copy_stage, digest, embedflow_version, fingerprint_inputs, new_run_name,
                               write_manifest)
from embedflow.promotion import check_gates, collect_metrics, latest_metrics, read_latest, write_latest
from schemas import artifacts as names
from schemas import embeddings as embeddings_schema
from schemas.runs import (IMPORT_STAGE, LATEST_FILE, MANIFEST_FILE, RUNS_DIR, STAGE_DIRS,  # noqa: F401
                          STAGE_RECORD_SUFFIX, STAGES, STEPS)

class GatesFailed(ValueError):
    """The run finished but a quality gate failed: `latest` was left where it was."""




# ------------------------------------------------------------------- fingerprints


def _sentiment_available():
    return all(importlib.util.find_spec(m) is not None for m in ("jobs.sentiment", "trainer.sentiment"))


# ------------------------------------------------------------------------- stages


@dataclasses.dataclass
class Stage:
    name: str
    directory: str  # inside the run directory
    upstream: tuple
    inputs: tuple  # keys of config["inputs"] whose files it reads
    job: str = ""  # the job module (default: jobs.<name>)
    format_key: str | None = None  # the key of config["inputs"] that is its input's --format


STAGE_SPECS = {
    "corpus": Stage("corpus", STAGE_DIRS["corpus"], (), ("corpus",), format_key="corpus_format"),
    IMPORT_STAGE: Stage(IMPORT_STAGE, STAGE_DIRS[IMPORT_STAGE], (),
                        ("pretrained_vectors", "pretrained_coverage_text"), job="jobs.import_vectors",
                        format_key="pretrained_format"),
    "train": Stage("train", STAGE_DIRS["train"], ("corpus",), ()),
    "evaluate": Stage("evaluate", STAGE_DIRS["evaluate"], ("train",), ("analogies", "similarity")),
    "digits": Stage("digits", STAGE_DIRS["digits"], (), ("digits", "digits_eval"), format_key="digits_format"),
    "sentiment": Stage("sentiment", STAGE_DIRS["sentiment"], ("corpus", "train"), ("sentiment",),
                       format_key="sentiment_format"),
}
# Every stage in the order it runs: the import, when configured, before the stages that read it.
ORDER = ("corpus", IMPORT_STAGE, "train", "evaluate", "digits", "sentiment")
# Inputs that name exactly one file (the import job takes one).
SINGLE_FILE_INPUTS = ("pretrained_vectors", "pretrained_coverage_text")


def imports_vectors(config):
    """Whether the run imports `inputs.pretrained_vectors` instead of training its vectors."""
    return config["inputs"]["pretrained_vectors"] is not None


def upstream_of(stage, config):
    """The stages whose outputs `stage` reads. An import is both the run's embeddings and
    its tokenizer (a corpus-like output), so it stands for train and for corpus."""
    upstream = STAGE_SPECS[stage].upstream
    if imports_vectors(config):
        upstream = tuple(dict.fromkeys(IMPORT_STAGE if u in ("corpus", "train") else u for u in upstream))
    return upstream


def _repeat(flag, values):
    return [a for v in values for a in (flag, v)]


class Run:
    """One run of the chain under an output root."""

    def __init__(self, root, config, name=None, force=False, warm_start_from=None, config_file=None):
        if warm_start_from and imports_vectors(config):
            raise ValueError(f"--warm-start-from {warm_start_from} starts the train stage, but "
                             f"inputs.pretrained_vectors ({config['inputs']['pretrained_vectors']}) replaces "
                             "it with an import: give one of them")
        self.root = root.rstrip("/") if outputs.is_remote(root) else os.path.abspath(root)
        self.config = config
        self.name = name if name else new_run_name()
        self.dir = outputs.join(self.root, RUNS_DIR, self.name)
        self.force = force
        self.config_file = config_file
        self.records = {}
        self.inputs = {}
        self.warm_start = self._resolve_warm_start(warm_start_from) if warm_start_from else None

    # ------------------------------------------------------------------ paths

    def stage_dir(self, stage):
        return outputs.join(self.dir, STAGE_SPECS[stage].directory)

    def upstream(self, stage):
        return upstream_of(stage, self.config)

    def source_dir(self, role):
        """The directory of this run's "train" (its embeddings) or "corpus" (its tokenizer)."""
        return self.stage_dir(IMPORT_STAGE if imports_vectors(self.config) else role)

    def record_path(self, stage, run_dir=None):
        return outputs.join(run_dir if run_dir else self.dir, stage + STAGE_RECORD_SUFFIX)

    def _resolve_warm_start(self, ref):
        if ref == LATEST_FILE:
            ref = read_latest(self.root)
            if ref is None:
                raise ValueError(f"--warm-start-from latest: {self.root} has no promoted run yet")
        run_dir = ref if (outputs.is_remote(ref) or os.path.isabs(ref) or os.sep in ref) \
            else outputs.join(self.root, RUNS_DIR, ref)
        embeddings = outputs.join(run_dir, STAGE_SPECS["train"].directory)
        if outputs.exists(outputs.join(run_dir, embeddings_schema.VECTORS_NPY)):
            embeddings = run_dir  # an embeddings output itself (embedflow train or import-vectors)
        try:
            info = outputs.require_completed(embeddings, "--warm-start-from", "embedflow run")
        except FileNotFoundError as e:
            raise FileNotFoundError(f"--warm-start-from {ref}: no complete embeddings ({e})") from None
        return {"run": ref, "embeddings": embeddings, "completed_at": info.get("completed_at"),
                "vocab_size": info.get("vocab_size")}

    # ---------------------------------------------------------- fingerprints

    def prepare(self, stages):
        """Fingerprints every input the selected stages read; fails before any work."""
        for stage in stages:
            for key in STAGE_SPECS[stage].inputs:
                patterns = self.config["inputs"][key]
                if isinstance(patterns, str):
                    patterns = [patterns]
                if not patterns or key in self.inputs:
                    continue
                self.inputs[key] = fingerprint_inputs(patterns, key)
                found = self.inputs[key]["files"]
                if key in SINGLE_FILE_INPUTS and len(found) != 1:
                    raise ValueError(f"config inputs.{key}: {patterns[0]} matches {len(found)} files "
                                     f"({', '.join(f['path'] for f in found[:3])}, ...): name one file")

    def fingerprint(self, stage):
        spec = STAGE_SPECS[stage]
        payload = {
            "stage": stage,
            "embedflow": embedflow_version(),
            "layout_version": names.LAYOUT_VERSION,
            # beam_args say where a job runs (DirectRunner, Dataflow), not what it computes
            "parameters": {k: v for k, v in self.config.get(stage, {}).items() if k != "beam_args"},
            "inputs": {k: self.inputs[k]["fingerprint"] for k in spec.inputs if k in self.inputs},
            "input_format": self.config["inputs"][spec.format_key] if spec.format_key else None,
            "upstream": {u: self.records[u]["fingerprint"] for u in self.upstream(stage)},
        }
        if stage == "train" and self.warm_start:
            payload["warm_start"] = self.warm_start
        return digest(payload)

    # ----------------------------------------------------------------- reuse

    def find_reusable(self, stage, fingerprint):
        """The newest earlier stage output under ROOT with this fingerprint, or None."""
        pattern = outputs.join(self.root, RUNS_DIR, "*", stage + STAGE_RECORD_SUFFIX)
        found = []
        for m in FileSystems.match([pattern])[0].metadata_list:
            try:
                record = json.loads(outputs.read_text(m.path))
            except (ValueError, OSError):
                continue
            if record.get("fingerprint") != fingerprint:
                continue
            run_dir = m.path[: -len(stage + STAGE_RECORD_SUFFIX)].rstrip("/")
            source = outputs.join(run_dir, STAGE_SPECS[stage].directory)
            if FileSystems.exists(outputs.join(source, names.COMPLETED_FILE)):
                found.append((os.path.basename(run_dir), source))
        return max(found) if found else None

    def _write_record(self, stage, record):
        self.records[stage] = record
        outputs.write_text(self.record_path(stage), json.dumps(record, indent=2, sort_keys=True) + "\n")

    def _existing_record(self, stage, fingerprint, any_fingerprint=False):
        """This run's own record of `stage` when the stage is complete (a run built in steps).

        Args:
          any_fingerprint: accept a record of another fingerprint: a stage not selected is
            taken as the run holds it (an earlier step may have run it with other flags,
            such as --warm-start-from).
        """
        path = self.record_path(stage)
        if not FileSystems.exists(path):
            return None
        record = json.loads(outputs.read_text(path))
        complete = FileSystems.exists(outputs.join(self.stage_dir(stage), names.COMPLETED_FILE))
        return record if complete and (any_fingerprint or record.get("fingerprint") == fingerprint) else None

    # ------------------------------------------------------------------- run

    def run_stage(self, stage, execute):
        """Makes `stage` complete in this run: kept, reused (copied) or computed.

        Args:
          execute: whether this invocation may compute the stage (it is selected).

        Returns:
          the stage record, or None when the stage is not selected and cannot be reused.
        """
        fingerprint = self.fingerprint(stage)
        own = None if (self.force and execute) else self._existing_record(stage, fingerprint,
                                                                             any_fingerprint=not execute)
        if own:
            logging.info("run: %s already complete in this run", stage)
            self.records[stage] = own
            return own
        other = {"train": IMPORT_STAGE, IMPORT_STAGE: "train"}.get(stage)
        if other and FileSystems.exists(self.record_path(other)):
            raise ValueError(f"run {self.name} holds the embeddings of its {other} stage, which {stage} would "
                             f"replace: continue it with the inputs.pretrained_vectors it started with, "
                             "or start a new run")
        started = time.time()
        reusable = None if (self.force and execute) else self.find_reusable(stage, fingerprint)
        follower = follower_replica()
        if follower and reusable and reusable[0] != self.name:
            logging.info("run: %s unchanged: the chief copies it from run %s", stage, reusable[0])
            return None
        if reusable and reusable[0] != self.name:
            source_run, source = reusable
            logging.info("run: %s unchanged (fingerprint %s): copying it from run %s",
                         stage, fingerprint[:12], source_run)
            copy_stage(source, self.stage_dir(stage))
            record = {"stage": stage, "fingerprint": fingerprint, "status": "reused", "from_run": source_run,
                      "seconds": round(time.time() - started, 2)}
        elif execute:
            logging.info("run: %s: running (fingerprint %s)", stage, fingerprint[:12])
            self._run_stage_job(stage, self.stage_dir(stage))
            if follower:
                logging.info("run: %s: trained as a worker of the chief, which records the stage", stage)
                return None
            record = {"stage": stage, "fingerprint": fingerprint, "status": "ran",
                      "seconds": round(time.time() - started, 2)}
            if stage == "train" and self.warm_start:
                record["warm_start"] = self.warm_start
        else:
            return None  # not selected, not reusable: pending for a later invocation
        record["completed_at"] = outputs.utc_now()
        self._write_record(stage, record)
        return record

    def job_argv(self, stage, out):
        """The job module and the command line that compute `stage` into `out`."""
        i = self.config["inputs"]
        if stage == "corpus":
            argv = _repeat("--input", i["corpus"]) + ["--output", out, "--format", i["corpus_format"]]
        elif stage == IMPORT_STAGE:
            argv = ["--vectors", i["pretrained_vectors"], "--format", i["pretrained_format"], "--output", out]
            argv += ["--coverage-text", i["pretrained_coverage_text"]] if i["pretrained_coverage_text"] else []
        elif stage == "train":
            argv = ["--corpus", self.stage_dir("corpus"), "--output", out]
            argv += ["--init-from", self.warm_start["embeddings"]] if self.warm_start else []
        elif stage == "evaluate":
            argv = ["--embeddings", self.source_dir("train"), "--output-dir", out]
            argv += ["--analogies", i["analogies"]] if i["analogies"] else []
            argv += _repeat("--similarity", i["similarity"])
        elif stage == "digits":
            argv = _repeat("--input", i["digits"]) + _repeat("--eval-input", i["digits_eval"])
            argv += ["--format", i["digits_format"], "--output", out]
        elif stage == "sentiment":
            argv = _repeat("--input", i["sentiment"])
            argv += ["--format", i["sentiment_format"], "--corpus", self.source_dir("corpus"),
                     "--embeddings", self.source_dir("train"), "--output", out]
        else:
            raise ValueError(f"stage {stage} is not a job of its own")
        module = STAGE_SPECS[stage].job or f"jobs.{stage}"
        return module, argv + config_lib.job_flags(stage, self.config[stage])

    def _run_stage_job(self, stage, out):
        module, argv = self.job_argv(stage, out)
        try:
            importlib.import_module(module).run(argv)
        except ValueError as e:
            if stage != IMPORT_STAGE:
                raise
            # The import job names the file and line; say which config key gave the file.
            raise ValueError(f"stage {stage} of config inputs.pretrained_vectors: {e}") from e


# --------------------------------------------------------------------------- CLI


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="embedflow run",
        description="Run the whole chain into a new versioned run, write a report, promote it "
                    "when its quality gates pass.")
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="YAML or JSON config (default: the bundled sample)")
    parser.add_argument("--output-root", default="runs", metavar="DIR",
                        help="where runs/ and latest live, local or gs:// (default: ./runs)")
    parser.add_argument("--force", action="store_true", help="recompute stages even when reusable")
    parser.add_argument("--warm-start-from", default=None, metavar="RUN",
                        help="a run name under ROOT/runs, a run directory, or 'latest': the trainer "
                             "starts shared words from its vectors")
    parser.add_argument("--set", action="append", default=[], dest="assignments", metavar="SECTION.KEY=VALUE",
                        help="override one config key, such as train.epochs=1 (repeatable)")
    parser.add_argument("--stages", default=",".join(STEPS), metavar="LIST",
                        help=f"comma-separated steps to execute, of {','.join(STEPS)} (default: all); "
                             f"with inputs.pretrained_vectors, train (or {IMPORT_STAGE}) runs the import")
    parser.add_argument("--run-name", default=None, metavar="NAME",
                        help="write into (or continue) run NAME instead of a new one")
    args = parser.parse_args(argv)
    steps = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in steps if s not in STEPS + (IMPORT_STAGE,)]
    if unknown or not steps:
        raise ValueError(f"--stages {args.stages!r}: unknown step(s) {unknown}; choose from {','.join(STEPS)}"
                         f" (or {IMPORT_STAGE})")
    args.stages = steps
    if args.run_name is not None and (not args.run_name or "/" in args.run_name):
        raise ValueError(f"--run-name {args.run_name!r} must be a plain name (no '/')")
    outputs.check_output_path(args.output_root, "--output-root")
    return args


def _check_import(config):
    """The import's inputs, checked before any work."""
    i = config["inputs"]
    if not imports_vectors(config):
        for key in ("pretrained_format", "pretrained_coverage_text"):
            if i[key] is not None:
                raise ValueError(f"config inputs.{key} is set but inputs.pretrained_vectors is not: "
                                 "name the vectors file, or leave it unset")
        return
    if i["pretrained_format"] is None:
        raise ValueError(f"config inputs.pretrained_format: set it to the format of inputs.pretrained_vectors "
                         f"({i['pretrained_vectors']}), one of {list(config_lib.PRETRAINED_FORMATS)}")


def select_stages(config):
    """(stages to run, stages skipped) by the config; fails when sentiment has no input.

    With `inputs.pretrained_vectors` the import replaces train, and corpus runs only if a
    selected stage still reads it (none does: the import is the tokenizer too).
    """
    _check_import(config)
    stages = [s for s in STAGES if s != "sentiment" or config["sentiment"]["enabled"]]
    skipped = [] if "sentiment" in stages else ["sentiment"]
    if imports_vectors(config):
        stages = [IMPORT_STAGE if s == "train" else s for s in stages]
        if not any("corpus" in upstream_of(s, config) for s in stages):
            stages.remove("corpus")
        skipped += [s for s in ("corpus", "train") if s not in stages]
    if "sentiment" in stages and not _sentiment_available():
        logging.warning("run: the sentiment stage is skipped: jobs.sentiment or trainer.sentiment "
                        "is not installed")
        stages.remove("sentiment")
        skipped.append("sentiment")
    if "sentiment" in stages and not config["inputs"]["sentiment"]:
        raise ValueError("config inputs.sentiment is empty: name the labelled text, "
                         "or set sentiment.enabled: false")
    return stages, skipped


def select_steps(steps, config):
    """The steps to execute: with an import, the `train` step (the run's embeddings) is the import."""
    if not imports_vectors(config):
        if IMPORT_STAGE in steps:
            raise ValueError(f"--stages {IMPORT_STAGE}: set inputs.pretrained_vectors (the file to import)")
        return list(steps)
    return list(dict.fromkeys(IMPORT_STAGE if s == "train" else s for s in steps))


def follower_replica(environ=None):
    """True in a replica of a multi-worker training (TF_CONFIG names its cluster) that is
    not the chief: it trains beside the others, and leaves the run's records, manifest
    and any copying to the chief (tf.distribute's rule: the "chief" task, else worker 0)."""
    spec = json.loads((environ if environ is not None else os.environ).get("TF_CONFIG") or "{}")
    task, cluster = spec.get("task") or {}, spec.get("cluster") or {}
    kind = task.get("type")
    if not kind or kind in ("chief", "master"):
        return False
    if kind == "worker" and not {"chief", "master"} & set(cluster):
        return int(task.get("index", 0)) != 0
    return True


def run_stages(run_, stages, steps):
    """Makes every stage complete (kept, reused or computed); returns those still pending."""
    pending = []
    for stage in stages:
        missing = [u for u in run_.upstream(stage) if u not in run_.records]
        if missing and stage in steps:
            raise ValueError(f"stage {stage} needs {missing[0]}, which is not complete in run "
                             f"{run_.name}: run it first (--stages {missing[0]} --run-name {run_.name})")
        if missing or run_.run_stage(stage, execute=stage in steps) is None:
            pending.append(stage)
    if pending and {"report", "promote"} & set(steps):
        raise ValueError(f"run {run_.name} is not complete: stage(s) {', '.join(pending)} have not run "
                         f"(run them with --stages {','.join(pending)} --run-name {run_.name})")
    return pending


def report_and_promote(run_, steps, skipped, started_at, metrics):
    """Gates, the report and the `latest` pointer; returns the manifest.

    Raises:
      GatesFailed: a gate failed while promoting; `latest` did not move.
    """
    previous, previous_metrics = latest_metrics(run_.root)
    gates = check_gates(metrics, run_.config["gates"],
                        previous_metrics if previous != run_.name else None, skipped)
    passed = all(g["passed"] for g in gates)
    promote = "promote" in steps
    promotion = {"passed": passed, "previous_latest": previous,
                 "promoted": promote and passed, "skipped_stages": skipped}
    if "report" in steps:
        from embedflow import report  # pylint: disable=import-outside-toplevel

        report.write_report(run_.dir, {"run": run_.name, "stages": run_.records, "metrics": metrics,
                                       "gates": gates, "promotion": promotion, "config": run_.config,
                                       "latest_metrics": previous_metrics})
    status = "promoted" if promote and passed else ("gated" if promote else "complete")
    manifest = write_manifest(run_, status, started_at, metrics, gates, promotion)
    if promote and passed:
        write_latest(run_.root, run_.name)  # the last act: only a complete, passing run moves it
        logging.info("run: %s promoted: %s now names it", run_.name, outputs.join(run_.root, LATEST_FILE))
    elif promote:
        failed = [f"{g['gate']} ({g['metric']} {g['value']} < {g['threshold']:.4f})"
                  for g in gates if not g["passed"]]
        raise GatesFailed(f"run {run_.name} is complete but not promoted, gates failed: {'; '.join(failed)}. "
                          f"latest still names {previous}. Report: {outputs.join(run_.dir, 'report.md')}")
    print(f"embedflow run: {run_.name} {status}; report: {outputs.join(run_.dir, 'report.md')}")
    return manifest


def run(argv=None):
    """Runs the chain. Returns the manifest (a dict).

    Raises:
      GatesFailed: the run is complete but a gate failed; `latest` did not move.
    """
    args = parse_args(argv)
    config = config_lib.load_config(args.config, args.assignments)
    run_ = Run(args.output_root, config, name=args.run_name, force=args.force,
               warm_start_from=args.warm_start_from, config_file=args.config)
    stages, skipped = select_stages(config)
    steps = select_steps(args.stages, config)
    run_.prepare(stages)  # input fingerprints: a missing input fails here, before any work
    started_at = outputs.utc_now()
    logging.info("run: %s", run_.dir)
    if follower_replica():
        # A worker of the chief's training: the chief writes the run's records and manifest.
        run_stages(run_, stages, [s for s in steps if s == "train"])
        print(f"embedflow run: {run_.name}: trained as a worker; the chief records the run")
        return {}
    try:
        pending = run_stages(run_, stages, steps)
    except BaseException as e:
        write_manifest(run_, "failed", started_at, error=f"{type(e).__name__}: {e}")
        raise
    metrics = collect_metrics(run_.dir, run_.records)
    if "promote" in steps or "report" in steps:
        return report_and_promote(run_, steps, skipped, started_at, metrics)
    manifest = write_manifest(run_, "incomplete" if pending else "complete", started_at, metrics)
    print(f"embedflow run: {run_.name}: ran {','.join(s for s in steps if s in ORDER)}; "
          f"pending: {','.join(pending) or 'none'}")
    return manifest


if __name__ == "__main__":
    main("run", run)
