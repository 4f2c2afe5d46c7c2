"""The `embedflow run` config: sections, defaults and checks.

Sections `corpus`, `train`, `import`, `evaluate`, `digits` and `sentiment` are the
parameters of the job that computes the stage (`import` is `embedflow import-vectors`,
run instead of corpus and train when `inputs.pretrained_vectors` is set): their keys,
defaults and checks come from that job's `PARAMS` declaration (`jobs/*.py`), so a key
is a job flag (`min_count` is `--min-count`). Each stage section also takes `args`
(more flags for the job, a list or one shell-style string); the Beam jobs take
`beam_args` (Beam's flags), and `sentiment` takes `enabled`. The run's own sections,
`inputs` and `gates`, are declared here. `SAMPLE` holds the few values that differ
from the jobs' defaults for the bundled sample, with why.

A key the config does not know, or a value of the wrong type or range, fails before
any work, naming the key and the value: `config: train.epochs must be an integer
>= 1, got 0`.
"""

import copy
import json
import os
import shlex
import sys

from core import outputs
from core.params import Params, param
from jobs import corpus as corpus_job
from jobs import digits as digits_job
from jobs import evaluate as evaluate_job
from jobs import import_vectors as import_job
from jobs import sentiment as sentiment_job
from jobs import train as train_job

STAGE_PARAMS = {"corpus": corpus_job.PARAMS, "train": train_job.PARAMS, "import": import_job.PARAMS,
                "evaluate": evaluate_job.PARAMS, "digits": digits_job.PARAMS, "sentiment": sentiment_job.PARAMS}
BEAM_STAGES = ("corpus", "import", "digits", "sentiment")
PRETRAINED_FORMATS = import_job.FORMATS


def sample_dir():
    """Where the bundled sample is: the source checkout's `sample/`, else the copy that
    `pip install` puts under `<prefix>/share/embedflow/`, else `sample` (the cwd's)."""
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for base in (checkout, os.path.join(sys.prefix, "share", "embedflow")):
        if os.path.isfile(os.path.join(base, "sample", "ATTRIBUTION.md")):
            return os.path.join(base, "sample")
    return "sample"


SAMPLE_DIR = sample_dir()


def _sample(*parts):
    return os.path.join(SAMPLE_DIR, *parts)


class InputsParams(Params):
    """What the chain reads: the run's `inputs` section. Relative paths resolve against
    the current directory; the defaults name the bundled sample wherever it is installed."""

    corpus: list[str] = param([_sample("corpus", "*.gz")], min_length=1, help="text for the corpus job")
    corpus_format: str = param("auto", choices=corpus_job.FORMATS, help="the corpus job's --format")
    analogies: str | None = param(_sample("eval", "questions-words.txt"), help="analogy questions")
    similarity: list[str] = param([_sample("eval", "wordsim353.tsv")], help="word-similarity sets")
    digits: list[str] = param([_sample("digits", "optdigits", "optdigits-orig.tra.gz")], min_length=1,
                              help="training digits")
    digits_eval: list[str] = param([_sample("digits", "optdigits", "optdigits-orig.tes.gz")],
                                   help="eval digits (empty: hold out a fraction)")
    digits_format: str = param("optdigits", choices=digits_job.FORMATS, help="the digits job's --format")
    sentiment: list[str] = param([_sample("sentiment", "rt-polarity")], help="labelled text")
    sentiment_format: str = param("polarity", choices=sentiment_job.FORMATS,
                                  help="the sentiment job's --format")
    # Set, the run imports these vectors (`embedflow import-vectors`, parameters in the
    # `import` section) instead of running corpus and train.
    pretrained_vectors: str | None = param(None, help="another tool's word vectors file (local or gs://): "
                                                      "imported in place of the corpus and train stages")
    pretrained_format: str | None = param(None, choices=PRETRAINED_FORMATS,
                                          help="the import job's --format (required with pretrained_vectors)")
    pretrained_coverage_text: str | None = param(None, help="the import job's --coverage-text: a text whose "
                                                            "token share the vectors cover goes in the report")


class GatesParams(Params):
    """Promotion gates: the run's `gates` section (null switches a gate off)."""

    # On the bundled sample analogies reach about 20%: the gate catches a broken trainer,
    # not a weak corpus (cloud/run.yaml holds the gates of real data).
    min_analogy_accuracy: float | None = param(0.05, ge=0, le=1, help="least analogy accuracy")
    min_digit_accuracy: float | None = param(0.9, ge=0, le=1, help="least digit accuracy")
    min_sentiment_accuracy: float | None = param(0.6, ge=0, le=1, help="least sentiment accuracy")
    max_regression: float | None = param(0.03, ge=0, help="largest drop of a metric below latest's")


RUN_PARAMS = {"inputs": InputsParams, "gates": GatesParams}

# The bundled sample's values where they differ from the jobs' defaults, so the whole
# chain finishes in about 10 minutes on 2 CPU cores and shows what pretrained vectors
# bring (the sentiment learning curve, pretrained against scratch, over 3 folds).
SAMPLE = {
    # 5.2M words: 10 epochs give vectors good enough to transfer (analogies ~20%).
    "train": {"epochs": 10},
    "evaluate": {"probe_words": ["france", "king", "computer", "music", "river", "war"]},
    # optdigits converges in about 20 epochs; early stopping rarely waits longer.
    "digits": {"epochs": 20},
    # 3 folds give the curve a spread; min_epochs keeps early stopping from giving up
    # before the slowly fine-tuned pretrained rows (or a tiny scratch set) move.
    # adapt_epochs: the vectors first learn the reviews' own usage (skip-gram on each
    # fold's training texts, unlabelled; about 6 s a fold): +1.5 to +1.9 points at 100 texts
    # over 18 draws (benchmarks.curve_draws).
    "sentiment": {"folds": 3, "eval_fraction": None, "epochs": 20, "min_epochs": 5,
                  "curve_sizes": "100,300,1000", "compare_scratch": True, "adapt_epochs": 50},
}


def _argv(value, key):
    """A list of strings, or one string split as a shell does."""
    if isinstance(value, str):
        return shlex.split(value)
    if isinstance(value, list) and all(isinstance(x, str) for x in value):
        return value
    raise ValueError(f"{key} must be a list of strings or one string, got {value!r}")


def _extra_keys(section):
    keys = {"args": []}
    if section in BEAM_STAGES:
        keys["beam_args"] = []
    if section == "sentiment":
        keys["enabled"] = True
    return keys


def defaults():
    """The whole config with every key at its default."""
    config = {name: cls.defaults() for name, cls in RUN_PARAMS.items()}
    for section, cls in STAGE_PARAMS.items():
        config[section] = {**cls.defaults(), **copy.deepcopy(SAMPLE.get(section, {})),
                           **_extra_keys(section)}
    return {name: config[name] for name in ("inputs", *STAGE_PARAMS, "gates")}


def _check_section(section, values, current):
    """`current` updated with `values` (one section), checked."""
    extra = _extra_keys(section) if section in STAGE_PARAMS else {}
    cls = STAGE_PARAMS.get(section) or RUN_PARAMS[section]
    cls.check_keys(values, section, extra)
    merged = dict(current)
    for key, value in values.items():
        if key in extra:
            if key == "enabled" and not isinstance(value, bool):
                raise ValueError(f"{section}.enabled must be true or false, got {value!r}")
            merged[key] = value if key == "enabled" else _argv(value, f"{section}.{key}")
    params = {k: v for k, v in values.items() if k not in extra}
    given = {k: v for k, v in merged.items() if k not in extra and k in cls.config_keys()}
    for key, value in params.items():
        # Setting one of a group (sentiment's folds / eval_fraction) clears the others.
        for other in cls.group_members(key) if value is not None else ():
            if other not in params and other in given:
                given[other] = None
    given.update(params)
    checked = cls.from_mapping(given, section)
    merged.update(checked)
    return merged


def validate_config(data, source="config", base=None):
    """Merges `data` over the defaults (or `base`) and checks every key.

    Args:
      data: a dict of sections, each a dict of keys (any subset).
      source: names the config in messages (a file name or "--set").
      base: a checked config to start from instead of the defaults.

    Returns:
      the full config, every key present.

    Raises:
      ValueError: naming the key, what it must be and what it was.
    """
    config = copy.deepcopy(base) if base is not None else defaults()
    for section, values in data.items():
        if section not in config:
            raise ValueError(f"{source}: unknown section {section!r} (known: {', '.join(config)})")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ValueError(f"{source}: section {section!r} must be a mapping of keys, "
                             f"got {type(values).__name__}")
        try:
            config[section] = _check_section(section, values, config[section])
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None
    return config


def _yaml_loader():
    """YAML's safe loader without its date rule: `layers: 1024-32-10` stays a string."""
    import yaml  # pylint: disable=import-outside-toplevel

    class Loader(yaml.SafeLoader):  # pylint: disable=too-many-ancestors
        pass

    Loader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    return Loader


def load_yaml(text):
    import yaml  # pylint: disable=import-outside-toplevel

    return yaml.load(text, Loader=_yaml_loader())  # nosec: a SafeLoader subclass


def read_config_file(path):
    """Parses a YAML or JSON config file (JSON is YAML; a .json file is read as JSON)."""
    import yaml  # pylint: disable=import-outside-toplevel

    if not outputs.exists(path):
        raise FileNotFoundError(f"--config {path} does not exist")
    text = outputs.read_text(path)
    try:
        data = json.loads(text) if path.endswith(".json") else load_yaml(text)
    except (ValueError, yaml.YAMLError) as e:
        raise ValueError(f"--config {path}: not valid {'JSON' if path.endswith('.json') else 'YAML'}: "
                         f"{e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"--config {path}: the top level must be a mapping of sections "
                         f"({', '.join(defaults())}), got {type(data).__name__}")
    return data


def parse_set(assignment):
    """'train.epochs=1' -> (('train', 'epochs'), 1); the value is read as YAML."""
    import yaml  # pylint: disable=import-outside-toplevel

    key, sep, value = assignment.partition("=")
    if not sep or key.count(".") != 1:
        raise ValueError(f"--set {assignment!r}: expected SECTION.KEY=VALUE, such as train.epochs=1")
    try:
        parsed = load_yaml(value) if value.strip() else None
    except yaml.YAMLError as e:
        raise ValueError(f"--set {assignment!r}: the value is not valid YAML: {e}") from None
    return tuple(key.split(".")), parsed


def load_config(path=None, assignments=()):
    """The validated config: the defaults, then the file at `path`, then `--set` assignments."""
    data = read_config_file(path) if path else {}
    config = validate_config(data, f"--config {path}" if path else "config")
    for assignment in assignments:
        (section, key), value = parse_set(assignment)
        config = validate_config({section: {key: value}}, f"--set {assignment}", base=config)
    return config


def job_flags(section, values):
    """A stage section -> the job's flags (declared defaults left out), then `args`, `beam_args`."""
    cls = STAGE_PARAMS[section]
    params = {k: v for k, v in values.items() if k in cls.config_keys()}
    return cls.to_argv(params) + list(values.get("args", [])) + list(values.get("beam_args", []))
