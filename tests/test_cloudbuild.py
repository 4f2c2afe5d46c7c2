"""cloudbuild.yaml and the Dataflow job it launches, checked offline.

The file parses; every substitution it uses is declared (or built in); every step that
runs embedflow calls a real command whose flags the real argument parsers accept, with a
config that validates; the stage jobs accept the flags `embedflow run` gives them; the
corpus job's Dataflow graph builds with the build's own Beam options (`--dry_run`), and
its sdist is built and staged as Dataflow's `--setup_file` would.
"""

import os
import re
import shlex
import tarfile

import pytest
import yaml

from embedflow import cli
from embedflow import run as chain_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLOUDBUILD = os.path.join(REPO, "cloudbuild.yaml")
BUILTIN = {"PROJECT_ID": "my-project", "BUILD_ID": "b-1234", "COMMIT_SHA": "0" * 40, "SHORT_SHA": "0000000",
           "PROJECT_NUMBER": "123", "LOCATION": "us-central1", "REPO_NAME": "embedflow", "BRANCH_NAME": "main",
           "TAG_NAME": "", "REVISION_ID": "0" * 40, "TRIGGER_NAME": "embedflow-retrain",
           "SERVICE_ACCOUNT_EMAIL": "sa@my-project.iam.gserviceaccount.com"}
# ${NAME} or $NAME, but not $$NAME (a literal $ for bash)
SUBSTITUTION = re.compile(r"(?<!\$)\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Z_][A-Z0-9_]*))")


@pytest.fixture(scope="module")
def build():
    with open(CLOUDBUILD, encoding="utf-8") as f:
        text = f.read()
    return text, yaml.safe_load(text)


def _used(text):
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    return {a or b for a, b in SUBSTITUTION.findall(text)}


def _expand(value, values):
    for _ in range(5):  # dynamic substitutions may name other substitutions
        value = SUBSTITUTION.sub(lambda m: values[m.group(1) or m.group(2)], value)
    return value.replace("$$", "$")


def _values(config):
    values = dict(BUILTIN)
    values.update({k: str(v) for k, v in config["substitutions"].items()})
    return values


def _embedflow_calls(config):
    """(step id, argv after `embedflow`) of every step that runs embedflow, expanded."""
    values, calls = _values(config), []
    for step in config["steps"]:
        if step.get("entrypoint") == "embedflow":
            calls.append((step["id"], [_expand(a, values) for a in step["args"]]))
        script = " ".join(step.get("args", []))
        if "--command=embedflow" in script:  # a Vertex AI job running the image
            args = re.search(r"--args=(\S+)", script).group(1)
            calls.append((step["id"], [_expand(a, values) for a in args.split(",")]))
    return calls


def test_the_file_parses_into_steps_with_ids(build):
    _, config = build
    ids = [s["id"] for s in config["steps"]]
    assert ids == ["build-image", "push-image", "corpus", "train", "downstream", "promote"]
    assert all("name" in s for s in config["steps"])
    assert config["options"]["dynamicSubstitutions"] is True


def test_every_substitution_used_is_declared_and_every_declared_one_used(build):
    text, config = build
    declared = set(config["substitutions"])
    used = _used(text)
    undeclared = {u for u in used if u.startswith("_") and u not in declared}
    unknown = {u for u in used if not u.startswith("_") and u not in BUILTIN}
    assert not undeclared and not unknown, (undeclared, unknown)
    assert declared <= used, declared - used
    assert all(name.startswith("_") for name in declared)  # Cloud Build requires user names to


def test_every_step_calls_a_real_command_with_flags_its_parser_accepts(build, monkeypatch):
    _, config = build
    monkeypatch.chdir(REPO)  # steps run in the repository (/workspace, /app in the image)
    calls = _embedflow_calls(config)
    assert [step for step, _ in calls] == ["corpus", "train", "downstream", "promote"]
    stages_run = []
    for step, argv in calls:
        assert argv[0] in cli.COMMANDS, (step, argv[0])
        assert argv[0] == "run"
        args = chain_run.parse_args(argv[1:])
        loaded = chain_run.load_config(args.config, args.assignments)
        assert args.output_root == "gs://embedflow-data" and args.run_name == "b-1234"
        assert loaded["inputs"]["corpus"] == ["gs://embedflow-data/corpus/*.bz2"]
        stages_run += args.stages
    assert stages_run == list(chain_run.STEPS)  # every stage, each once, in order


def test_dataflow_options_of_the_corpus_step_are_beam_options(build, monkeypatch):
    from apache_beam.options.pipeline_options import PipelineOptions

    monkeypatch.chdir(REPO)
    argv = dict(_embedflow_calls(build[1]))["corpus"]
    args = chain_run.parse_args(argv[1:])
    beam_args = chain_run.load_config(args.config, args.assignments)["corpus"]["beam_args"]
    known = PipelineOptions([]).get_all_options(drop_default=False)
    names = [a[2:].split("=", 1)[0] for a in beam_args]
    assert all(n in known for n in names), [n for n in names if n not in known]
    options = PipelineOptions(beam_args).get_all_options()
    assert options["runner"] == "DataflowRunner" and options["region"] == "us-central1"
    assert options["sdk_container_image"] == "us-central1-docker.pkg.dev/my-project/embedflow/embedflow:b-1234"
    assert options["service_account_email"] == "embedflow-runner@my-project.iam.gserviceaccount.com"
    assert options["temp_location"] == "gs://embedflow-data/tmp" and options["max_num_workers"] == 10


def test_stage_jobs_accept_the_flags_run_gives_them(monkeypatch, tmp_path):
    from pipelines import corpus, digits
    from trainer import skipgram

    monkeypatch.chdir(REPO)
    for config_file in (None, "cloud/run.yaml"):
        config = chain_run.load_config(config_file, ["corpus.beam_args=--runner=DataflowRunner --project=p"])
        r = chain_run.Run(str(tmp_path), config, name="r")
        _, argv = r.job_argv("corpus", str(tmp_path / "c"))
        args, beam_args = corpus.parse_args(argv)
        assert beam_args == ["--runner=DataflowRunner", "--project=p"]  # nothing else leaks to Beam
        assert args.min_count == config["corpus"]["min_count"]
        _, argv = r.job_argv("train", str(tmp_path / "e"))
        assert skipgram.parse_args(argv).dim == config["train"]["dim"]
        _, argv = r.job_argv("digits", str(tmp_path / "d"))
        args, beam_args = digits.parse_args(argv)
        assert args.layers == config["digits"]["layers"] and beam_args == []
        if chain_run._sentiment_available():  # pylint: disable=protected-access
            from pipelines import sentiment  # pylint: disable=import-outside-toplevel,no-name-in-module

            _, argv = r.job_argv("sentiment", str(tmp_path / "s"))
            args, beam_args = sentiment.parse_args(argv)
            assert beam_args == [] and args.folds == config["sentiment"]["folds"]


def test_corpus_dataflow_graph_builds_offline_and_its_sdist_stages(build, tmp_path, monkeypatch):
    """--dry_run=True builds the Dataflow job (graph, options) without submitting it."""
    import apache_beam as beam
    from apache_beam.runners.portability.stager import Stager

    from pipelines import corpus

    monkeypatch.chdir(REPO)
    argv = dict(_embedflow_calls(build[1]))["corpus"]
    run_args = chain_run.parse_args(argv[1:])
    beam_args = chain_run.load_config(run_args.config, run_args.assignments)["corpus"]["beam_args"]
    text = tmp_path / "in.txt"
    text.write_text("the cat sat on the mat\n")
    args, extra = corpus.parse_args(["--input", str(text), "--output", "gs://embedflow-data/runs/x/corpus",
                                     *beam_args, "--dry_run=True"])
    files = corpus.match_inputs(args.input)
    paths = [(m.path, m.size_in_bytes) for m in files]
    options = corpus.pipeline_options(extra, "analyze")
    p = beam.Pipeline(options=options)
    # tf.Transform makes its temp directory while the graph is built: a local one here.
    corpus.build(p, args, paths, "gs://embedflow-data/runs/x/corpus.partial", str(tmp_path / "tft"))
    result = p.run()
    job = result.job
    assert job.proto.type == 1  # JOB_TYPE_BATCH
    pipeline = job.proto_pipeline
    labels = {t.unique_name for t in pipeline.components.transforms.values()}
    assert any(label.startswith("ReadCorpus") for label in labels), sorted(labels)[:20]
    images = {env.payload for env in pipeline.components.environments.values()}
    assert any(b"embedflow:b-1234" in payload for payload in images)

    # The sdist that `--setup_file ./setup.py` stages for workers without the image.
    staging = tmp_path / "staging"
    staging.mkdir()
    sdist_options = beam.options.pipeline_options.PipelineOptions(
        ["--setup_file", os.path.join(REPO, "setup.py"), "--temp_location", str(tmp_path)])
    resources = Stager.create_job_resources(sdist_options, str(staging))
    sdists = [f for f in os.listdir(staging) if f.endswith(".tar.gz")]
    assert resources and sdists, os.listdir(staging)
    with tarfile.open(staging / sdists[0]) as tar:
        members = tar.getnames()
    for module in ("pipelines/corpus.py", "schemas/corpus.py", "embedflow/run.py", "trainer/skipgram.py"):
        assert any(m.endswith(module) for m in members), module
