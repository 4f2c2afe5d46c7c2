"""The whole chain in one command: versioned runs, reuse by fingerprint, a report, promotion.

    embedflow run [--config FILE] [--output-root DIR] [--force] [--warm-start-from RUN]
                  [--set SECTION.KEY=VALUE ...] [--stages LIST] [--run-name NAME]

Runs corpus -> train -> evaluate -> digits -> sentiment, writes a report, then promotes
the run when every quality gate passes. With no arguments it runs on the bundled
sample (`sample/`) into `runs/` under the current directory.

Layout under ROOT (`--output-root`, local or `gs://`):

    runs/<UTC time>-<short id>/          one run
        corpus/ embeddings/ evaluation/ digits/ sentiment/
                                         one job output per stage (info.json, COMPLETED)
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

Config (YAML or JSON; see `DEFAULTS` for every key and its default): sections
`inputs`, `corpus`, `train`, `evaluate`, `digits`, `sentiment`, `gates`. A key the
schema does not know, or a value of the wrong type or range, is an error naming the
key before any work starts. Relative paths resolve against the current directory.
`--set train.epochs=1` overrides one key (the value is read as YAML).

Cloud use: `--stages corpus` with `--run-name NAME` runs only that stage into run NAME,
so each stage can run where it belongs (Dataflow, Vertex AI) and a last
`--stages report,promote` step promotes; stages not selected must already be complete
in the run or reusable by fingerprint.
"""

import argparse
import copy
import dataclasses
import datetime
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import shlex
import shutil
import subprocess
import time
import uuid

from apache_beam.io.filesystems import FileSystems

from core import outputs
from schemas import artifacts as names

RUNS_DIR = "runs"
LATEST_FILE = "latest"
MANIFEST_FILE = "manifest.json"
STAGE_RECORD_SUFFIX = ".stage.json"
STAGES = ("corpus", "train", "evaluate", "digits", "sentiment")
STEPS = STAGES + ("report", "promote")

# Every key of the config, with its default: the bundled sample, sized so the whole
# chain finishes in about 10 minutes on 2 CPU cores.
DEFAULTS = {
    "inputs": {
        "corpus": ["sample/corpus/*.gz"],
        "corpus_format": "auto",
        "analogies": "sample/eval/questions-words.txt",
        "similarity": ["sample/eval/wordsim353.tsv"],
        "digits": ["sample/digits/optdigits/optdigits-orig.tra.gz"],
        "digits_eval": ["sample/digits/optdigits/optdigits-orig.tes.gz"],
        "digits_format": "optdigits",
        "sentiment": ["sample/sentiment/rt-polarity"],
        "sentiment_format": "polarity",
    },
    "corpus": {"min_count": 5, "max_vocab": None, "window": 5, "sample": 1e-3, "num_shards": 0,
               "args": [], "beam_args": []},
    "train": {"dim": 100, "epochs": 5, "negatives": 5, "learning_rate": 0.025, "batch_size": None,
              "seed": 1, "strategy": "auto", "tpu": None, "args": []},
    "evaluate": {"restrict_vocab": 30000, "probe_words": ["france", "king", "computer", "music", "river",
                                                          "war"],
                 "topn": 8, "pca_words": 300},
    "digits": {"layers": "1024-512-10", "epochs": 20, "batch_size": 128, "seed": 0, "args": [],
               "beam_args": []},
    "sentiment": {"enabled": True, "folds": None, "eval_fraction": 0.2, "epochs": 15, "hidden": 64,
                  "curve_sizes": "300,1000,3000", "compare_scratch": True, "seed": 0, "args": [],
                  "beam_args": []},
    # On the 0.65M-word sample, analogies reach about 1%: the gate catches a broken
    # trainer, not a weak corpus (cloud/run.yaml holds the gates of real data).
    "gates": {"min_analogy_accuracy": 0.005, "min_digit_accuracy": 0.9, "min_sentiment_accuracy": 0.6,
              "max_regression": 0.03},
}


class GatesFailed(ValueError):
    """The run finished but a quality gate failed: `latest` was left where it was."""


# ------------------------------------------------------------------------ config


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v):
    return (isinstance(v, (int, float))) and not isinstance(v, bool)


def _check_list(v):
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        return None, "must be a list of strings"
    return v, None


def _int(minimum, optional=False):
    def check(v):
        if v is None and optional:
            return v, None
        if not _is_int(v) or v < minimum:
            return None, f"must be an integer >= {minimum}" + (" or null" if optional else "")
        return v, None
    return check


def _float(low, high=None, optional=False, high_open=False):
    def check(v):
        if v is None and optional:
            return v, None
        bad = not _is_number(v) or v < low or (high is not None and (v >= high if high_open else v > high))
        if bad:
            span = f">= {low}" if high is None else f"in [{low}, {high}{')' if high_open else ']'}"
            return None, f"must be a number {span}" + (" or null" if optional else "")
        return float(v), None
    return check


def _choice(*choices):
    def check(v):
        if v not in choices:
            return None, f"must be one of {list(choices)}"
        return v, None
    return check


def _string(optional=False, nonempty=True):
    def check(v):
        if v is None and optional:
            return v, None
        if not isinstance(v, str) or (nonempty and not v):
            return None, "must be a non-empty string" + (" or null" if optional else "")
        return v, None
    return check


def _strings(nonempty=False):
    def check(v):
        v, error = _check_list(v)
        if error is None and nonempty and not v:
            error = "must name at least one path"
        return v, error
    return check


def _argv():
    """Command-line arguments: a list of strings, or one string split like a shell does."""
    def check(v):
        if isinstance(v, str):
            return shlex.split(v), None
        return _check_list(v)
    return check


def _bool(v):
    if not isinstance(v, bool):
        return None, "must be true or false"
    return v, None


SCHEMA = {
    "inputs": {
        "corpus": _strings(nonempty=True), "corpus_format": _choice("auto", "text", "wikiextractor"),
        "analogies": _string(optional=True), "similarity": _strings(),
        "digits": _strings(nonempty=True), "digits_eval": _strings(),
        "digits_format": _choice("optdigits", "mnist", "png"),
        "sentiment": _strings(), "sentiment_format": _string(),
    },
    "corpus": {"min_count": _int(1), "max_vocab": _int(1, optional=True), "window": _int(1),
               "sample": _float(0, 1, high_open=True), "num_shards": _int(0), "args": _argv(),
               "beam_args": _argv()},
    "train": {"dim": _int(1), "epochs": _int(1), "negatives": _int(1), "learning_rate": _float(1e-12),
              "batch_size": _int(1, optional=True), "seed": _int(0),
              "strategy": _choice("auto", "cpu", "mirrored", "multiworker", "tpu"),
              "tpu": _string(optional=True), "args": _argv()},
    "evaluate": {"restrict_vocab": _int(1), "probe_words": _strings(), "topn": _int(1), "pca_words": _int(2)},
    "digits": {"layers": _string(), "epochs": _int(1), "batch_size": _int(1), "seed": _int(0),
               "args": _argv(), "beam_args": _argv()},
    "sentiment": {"enabled": _bool, "folds": _int(2, optional=True),
                  "eval_fraction": _float(0, 1, optional=True, high_open=True),
                  "epochs": _int(1, optional=True), "hidden": _int(1), "curve_sizes": _string(optional=True),
                  "compare_scratch": _bool, "seed": _int(0), "args": _argv(), "beam_args": _argv()},
    "gates": {"min_analogy_accuracy": _float(0, 1, optional=True),
              "min_digit_accuracy": _float(0, 1, optional=True),
              "min_sentiment_accuracy": _float(0, 1, optional=True),
              "max_regression": _float(0, optional=True)},
}
assert set(SCHEMA) == set(DEFAULTS) and all(set(SCHEMA[s]) == set(DEFAULTS[s]) for s in SCHEMA)


def read_config_file(path):
    """Parses a YAML or JSON config file (JSON is YAML; a .json file is read as JSON)."""
    import yaml  # pylint: disable=import-outside-toplevel

    if not FileSystems.exists(path):
        raise FileNotFoundError(f"--config {path} does not exist")
    text = outputs.read_text(path)
    try:
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:
        raise ValueError(f"--config {path}: not valid {'JSON' if path.endswith('.json') else 'YAML'}: "
                         f"{e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"--config {path}: the top level must be a mapping of sections "
                         f"({', '.join(SCHEMA)}), got {type(data).__name__}")
    return data


def parse_set(assignment):
    """'train.epochs=1' -> (('train', 'epochs'), 1); the value is read as YAML."""
    import yaml  # pylint: disable=import-outside-toplevel

    key, sep, value = assignment.partition("=")
    if not sep or key.count(".") != 1:
        raise ValueError(f"--set {assignment!r}: expected SECTION.KEY=VALUE, such as train.epochs=1")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as e:
        raise ValueError(f"--set {assignment!r}: the value is not valid YAML: {e}") from None
    return tuple(key.split(".")), parsed


def validate_config(data, source="config"):
    """Merges `data` over DEFAULTS and checks every key.

    Args:
      data: a dict of sections, each a dict of keys (any subset of DEFAULTS).
      source: names the config in messages (a file name or "--set").

    Returns:
      the full config, every key present.

    Raises:
      ValueError: naming the key, what it must be and what it was.
    """
    config = copy.deepcopy(DEFAULTS)
    for section, values in data.items():
        if section not in SCHEMA:
            raise ValueError(f"{source}: unknown section {section!r} (known: {', '.join(SCHEMA)})")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ValueError(f"{source}: section {section!r} must be a mapping of keys, "
                             f"got {type(values).__name__}")
        for key, value in values.items():
            if key not in SCHEMA[section]:
                raise ValueError(f"{source}: unknown key {section}.{key} "
                                 f"(known in {section}: {', '.join(SCHEMA[section])})")
            checked, error = SCHEMA[section][key](value)
            if error:
                raise ValueError(f"{source}: {section}.{key} {error}, got {value!r}")
            config[section][key] = checked
    return config


def load_config(path=None, assignments=()):
    """The validated config: DEFAULTS, then the file at `path`, then `--set` assignments."""
    data = read_config_file(path) if path else {}
    source = f"--config {path}" if path else "config"
    config = validate_config(data, source)
    for assignment in assignments:
        (section, key), value = parse_set(assignment)
        checked = validate_config({section: {key: value}}, f"--set {assignment}")
        config[section][key] = checked[section][key]
    return config


# ------------------------------------------------------------------- fingerprints


def _digest(obj):
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def fingerprint_inputs(patterns, key):
    """Fingerprints the files that `patterns` (globs, files or folders) name.

    Raises:
      FileNotFoundError: a pattern matches nothing; the message names the config key.
    """
    metadata = []
    for pattern in patterns:
        matched = FileSystems.match([pattern])[0].metadata_list
        if not matched or (not outputs.is_remote(pattern) and os.path.isdir(pattern)):
            folder = pattern.rstrip("/")
            matched = FileSystems.match([folder + "/**" if outputs.is_remote(folder)
                                         else os.path.join(folder, "**")])[0].metadata_list
        if not matched:
            raise FileNotFoundError(f"config inputs.{key}: {pattern} matches no file")
        metadata.extend(matched)
    files, digest = outputs.fingerprint_files(metadata)
    return {"patterns": list(patterns), "files": files, "fingerprint": digest}


def _embedflow_version():
    from core import __version__  # pylint: disable=import-outside-toplevel

    return __version__


def _sentiment_available():
    return all(importlib.util.find_spec(m) is not None for m in ("jobs.sentiment", "trainer.sentiment"))


# ------------------------------------------------------------------------- stages


@dataclasses.dataclass
class Stage:
    name: str
    directory: str  # inside the run directory
    upstream: tuple
    inputs: tuple  # keys of config["inputs"] whose files it reads


STAGE_SPECS = {
    "corpus": Stage("corpus", "corpus", (), ("corpus",)),
    "train": Stage("train", "embeddings", ("corpus",), ()),
    "evaluate": Stage("evaluate", "evaluation", ("train",), ("analogies", "similarity")),
    "digits": Stage("digits", "digits", (), ("digits", "digits_eval")),
    "sentiment": Stage("sentiment", "sentiment", ("corpus", "train"), ("sentiment",)),
}


def _flag(key):
    return "--" + key.replace("_", "-")


def _flags(params, skip=("args", "beam_args", "enabled")):
    """Config keys -> job flags: min_count: 5 -> --min-count 5; true -> the bare flag."""
    argv = []
    for key, value in params.items():
        if key in skip or value is None or value is False:
            continue
        argv += [_flag(key)] if value is True else [_flag(key), str(value)]
    return argv


class Run:
    """One run of the chain under an output root."""

    def __init__(self, root, config, name=None, force=False, warm_start_from=None, config_file=None):
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

    def fingerprint(self, stage):
        spec = STAGE_SPECS[stage]
        payload = {
            "stage": stage,
            "embedflow": _embedflow_version(),
            "layout_version": names.LAYOUT_VERSION,
            # beam_args say where a job runs (DirectRunner, Dataflow), not what it computes
            "parameters": {k: v for k, v in self.config.get(stage, {}).items() if k != "beam_args"},
            "inputs": {k: self.inputs[k]["fingerprint"] for k in spec.inputs if k in self.inputs},
            "input_format": self.config["inputs"].get(f"{stage}_format"),
            "upstream": {u: self.records[u]["fingerprint"] for u in spec.upstream},
        }
        if stage == "train" and self.warm_start:
            payload["warm_start"] = self.warm_start
        return _digest(payload)

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
        started = time.time()
        reusable = None if (self.force and execute) else self.find_reusable(stage, fingerprint)
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
        i, params = self.config["inputs"], dict(self.config.get(stage, {}))
        if stage == "corpus":
            argv = [a for p in i["corpus"] for a in ("--input", p)]
            argv += ["--output", out, "--format", i["corpus_format"]]
            module = "jobs.corpus"
        elif stage == "train":
            argv = ["--corpus", self.stage_dir("corpus"), "--output", out]
            if self.warm_start:
                argv += ["--init-from", self.warm_start["embeddings"]]
            module = "jobs.train"
        elif stage == "evaluate":
            argv = ["--embeddings", self.stage_dir("train"), "--output-dir", out]
            argv += ["--analogies", i["analogies"]] if i["analogies"] else []
            argv += [a for p in i["similarity"] for a in ("--similarity", p)]
            argv += [a for w in params.pop("probe_words") for a in ("--probe-word", w)]
            module = "jobs.evaluate"
        elif stage == "digits":
            argv = [a for p in i["digits"] for a in ("--input", p)]
            argv += [a for p in i["digits_eval"] for a in ("--eval-input", p)]
            argv += ["--format", i["digits_format"], "--output", out]
            module = "jobs.digits"
        elif stage == "sentiment":
            if params["folds"] is not None:
                params["eval_fraction"] = None  # the job takes one of --folds and --eval-fraction
            argv = [a for p in i["sentiment"] for a in ("--input", p)]
            argv += ["--format", i["sentiment_format"], "--corpus", self.stage_dir("corpus"),
                     "--embeddings", self.stage_dir("train"), "--output", out]
            module = "jobs.sentiment"
        else:
            raise ValueError(f"stage {stage} is not a job of its own")
        return module, argv + _flags(params) + params.get("args", []) + params.get("beam_args", [])

    def _run_stage_job(self, stage, out):
        module, argv = self.job_argv(stage, out)
        importlib.import_module(module).run(argv)


def new_run_name():
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def copy_stage(source, target):
    """Copies a complete stage output into `target`, published like any job output."""
    info = outputs.read_info(source)
    skip = {names.INFO_FILE, names.COMPLETED_FILE}
    with outputs.StagedOutput(target) as out:
        if not outputs.is_remote(source) and not outputs.is_remote(target):
            shutil.copytree(source, out.path, dirs_exist_ok=True,
                            ignore=lambda d, files: [f for f in files if d == source and f in skip])
        else:
            prefix = source.rstrip("/") + "/"
            files = [f for f in outputs.list_files(source)
                     if f[len(prefix):] not in skip]
            FileSystems.copy(files, [outputs.join(out.path, f[len(prefix):]) for f in files])
        out.publish(info)


# --------------------------------------------------------------------- evaluation


# ---------------------------------------------------------------------- promotion


def collect_metrics(run_dir, records):
    """The metrics the gates read, from the stage outputs of a run."""
    metrics = {}
    if "evaluate" in records:
        metrics.update(outputs.read_info(outputs.join(run_dir, STAGE_SPECS["evaluate"].directory)).get("metrics", {}))
    if "digits" in records:
        m = json.loads(outputs.read_text(outputs.join(run_dir, STAGE_SPECS["digits"].directory, "metrics.json")))
        metrics["digit_accuracy"] = m["accuracy"]
    if "sentiment" in records:
        path = outputs.join(run_dir, STAGE_SPECS["sentiment"].directory, "metrics.json")
        if FileSystems.exists(path):
            m = json.loads(outputs.read_text(path))
            value = m.get("accuracy", m.get("pretrained"))
            if isinstance(value, dict):  # per model; the pretrained-embedding model is the one served
                value = value.get("pretrained", value.get("accuracy"))
            if _is_number(value):
                metrics["sentiment_accuracy"] = float(value)
            scratch = (m.get("scratch") or {}).get("split_accuracy", {}).get("mean")
            if _is_number(scratch):  # the same classifier from random embeddings: for the report
                metrics["sentiment_scratch_accuracy"] = float(scratch)
    return metrics


# gate name -> the metric it bounds from below
MIN_GATES = {"min_analogy_accuracy": "analogy_accuracy", "min_digit_accuracy": "digit_accuracy",
             "min_sentiment_accuracy": "sentiment_accuracy"}
REGRESSION_METRICS = ("analogy_accuracy", "similarity_spearman", "digit_accuracy", "sentiment_accuracy")


def check_gates(metrics, gates, latest_metrics=None, skipped=()):
    """Evaluates every gate.

    Args:
      metrics: this run's metrics.
      gates: the config's gates section.
      latest_metrics: the promoted run's metrics, or None when nothing is promoted.
      skipped: stages that did not run (their gates are not applied, and say so).

    Returns:
      list of dicts (gate, metric, value, threshold, passed, note).
    """
    results = []
    for gate, metric in MIN_GATES.items():
        threshold = gates.get(gate)
        if threshold is None:
            continue
        value = metrics.get(metric)
        if value is None and metric == "sentiment_accuracy" and "sentiment" in skipped:
            results.append({"gate": gate, "metric": metric, "value": None, "threshold": threshold,
                            "passed": True, "note": "sentiment stage skipped"})
            continue
        results.append({"gate": gate, "metric": metric, "value": value, "threshold": threshold,
                        "passed": value is not None and value >= threshold,
                        "note": "" if value is not None else "metric missing"})
    margin = gates.get("max_regression")
    if margin is not None and latest_metrics:
        for metric in REGRESSION_METRICS:
            old, new = latest_metrics.get(metric), metrics.get(metric)
            if old is None or new is None:
                continue
            results.append({"gate": "max_regression", "metric": metric, "value": new,
                            "threshold": old - margin, "passed": new >= old - margin,
                            "note": f"latest {old:.4f} - margin {margin}"})
    return results


def read_latest(root):
    """The name of the promoted run under `root`, or None."""
    path = outputs.join(root, LATEST_FILE)
    if not FileSystems.exists(path):
        return None
    return outputs.read_text(path).strip() or None


def write_latest(root, name):
    """Points `latest` at run `name` atomically."""
    path = outputs.join(root, LATEST_FILE)
    if outputs.is_remote(root):
        outputs.write_text(path, name + "\n")  # a single object write is atomic on GCS
        return
    temp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with open(temp, "w", encoding="utf-8") as f:
        f.write(name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)


def latest_metrics(root):
    name = read_latest(root)
    if name is None:
        return None, None
    path = outputs.join(root, RUNS_DIR, name, MANIFEST_FILE)
    if not FileSystems.exists(path):
        return name, None
    return name, json.loads(outputs.read_text(path)).get("metrics")


# ------------------------------------------------------------------------ lineage


def git_commit():
    """(commit, dirty) of the working directory's git checkout; $EMBEDFLOW_GIT_COMMIT wins."""
    if os.environ.get("EMBEDFLOW_GIT_COMMIT"):
        return os.environ["EMBEDFLOW_GIT_COMMIT"], None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10, check=True).stdout.strip()
        return commit, bool(dirty)
    except (OSError, subprocess.SubprocessError):
        return None, None


def write_manifest(run, status, started_at, metrics=None, gates=None, promotion=None, error=None):
    commit, dirty = git_commit()
    manifest = {
        "run": run.name, "root": run.root, "status": status, "started_at": started_at,
        "finished_at": outputs.utc_now(), "config_file": run.config_file, "config": run.config,
        "inputs": run.inputs, "stages": run.records,
        "warm_start_from": run.warm_start if run.warm_start else run.records.get("train", {}).get("warm_start"),
        "metrics": metrics if metrics is not None else {}, "gates": gates if gates is not None else [],
        "promotion": promotion, "git": {"commit": commit, "dirty": dirty},
        "versions": outputs.library_versions(),
    }
    if error:
        manifest["error"] = error
    outputs.write_text(outputs.join(run.dir, MANIFEST_FILE),
                         json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
    return manifest


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
                        help=f"comma-separated steps to execute, of {','.join(STEPS)} (default: all)")
    parser.add_argument("--run-name", default=None, metavar="NAME",
                        help="write into (or continue) run NAME instead of a new one")
    args = parser.parse_args(argv)
    steps = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in steps if s not in STEPS]
    if unknown or not steps:
        raise ValueError(f"--stages {args.stages!r}: unknown step(s) {unknown}; choose from {','.join(STEPS)}")
    args.stages = steps
    if args.run_name is not None and (not args.run_name or "/" in args.run_name):
        raise ValueError(f"--run-name {args.run_name!r} must be a plain name (no '/')")
    outputs.check_output_path(args.output_root, "--output-root")
    return args


def run(argv=None):
    """Runs the chain. Returns the manifest (a dict).

    Raises:
      GatesFailed: the run is complete but a gate failed; `latest` did not move.
    """
    args = parse_args(argv)
    config = load_config(args.config, args.assignments)
    run_ = Run(args.output_root, config, name=args.run_name, force=args.force,
               warm_start_from=args.warm_start_from, config_file=args.config)
    stages = [s for s in STAGES if s != "sentiment" or config["sentiment"]["enabled"]]
    skipped = []
    if "sentiment" in stages and not _sentiment_available():
        logging.warning("run: the sentiment stage is skipped: pipelines.sentiment or trainer.sentiment "
                        "is not installed")
        stages.remove("sentiment")
        skipped.append("sentiment")
    elif "sentiment" not in stages:
        skipped.append("sentiment")
    if "sentiment" in stages and not config["inputs"]["sentiment"]:
        raise ValueError("config inputs.sentiment is empty: name the labelled text, "
                         "or set sentiment.enabled: false")
    run_.prepare(stages)  # input fingerprints: a missing input fails here, before any work
    started_at = outputs.utc_now()
    logging.info("run: %s", run_.dir)
    pending = []
    try:
        for stage in stages:
            missing = [u for u in STAGE_SPECS[stage].upstream if u not in run_.records]
            if missing and stage in args.stages:
                raise ValueError(f"stage {stage} needs {missing[0]}, which is not complete in run "
                                 f"{run_.name}: run it first (--stages {missing[0]} --run-name {run_.name})")
            if missing or run_.run_stage(stage, execute=stage in args.stages) is None:
                pending.append(stage)
        if pending and {"report", "promote"} & set(args.stages):
            raise ValueError(f"run {run_.name} is not complete: stage(s) {', '.join(pending)} have not run "
                             f"(run them with --stages {','.join(pending)} --run-name {run_.name})")
    except BaseException as e:
        write_manifest(run_, "failed", started_at, error=f"{type(e).__name__}: {e}")
        raise
    metrics = collect_metrics(run_.dir, run_.records)
    if "promote" not in args.stages and "report" not in args.stages:
        manifest = write_manifest(run_, "incomplete" if pending else "complete", started_at, metrics)
        print(f"embedflow run: {run_.name}: ran {','.join(s for s in args.stages if s in STAGES)}; "
              f"pending: {','.join(pending) or 'none'}")
        return manifest

    previous, previous_metrics = latest_metrics(run_.root)
    gates = check_gates(metrics, config["gates"], previous_metrics if previous != run_.name else None, skipped)
    passed = all(g["passed"] for g in gates)
    promote = "promote" in args.stages
    promotion = {"passed": passed, "previous_latest": previous,
                 "promoted": promote and passed, "skipped_stages": skipped}
    if "report" in args.stages:
        from embedflow import report  # pylint: disable=import-outside-toplevel

        report.write_report(run_.dir, {"run": run_.name, "stages": run_.records, "metrics": metrics,
                                       "gates": gates, "promotion": promotion, "config": config,
                                       "latest_metrics": previous_metrics})
    status = "promoted" if promote and passed else ("gated" if promote else "complete")
    manifest = write_manifest(run_, status, started_at, metrics, gates, promotion)
    if promote and passed:
        write_latest(run_.root, run_.name)  # the last act: only a complete, passing run moves it
        logging.info("run: %s promoted: %s now names it", run_.name, outputs.join(run_.root, LATEST_FILE))
    elif promote:
        failed = [f"{g['gate']} ({g['metric']} {g['value']} < {g['threshold']:.4f})" for g in gates if not g["passed"]]
        raise GatesFailed(f"run {run_.name} is complete but not promoted, gates failed: {'; '.join(failed)}. "
                          f"latest still names {previous}. Report: {outputs.join(run_.dir, 'report.md')}")
    print(f"embedflow run: {run_.name} {status}; report: {outputs.join(run_.dir, 'report.md')}")
    return manifest


if __name__ == "__main__":
    from embedflow import cli

    cli.exit_now(cli.run_job("run", run, os.sys.argv[1:]))
