"""cloudbuild.yaml and the Dataflow job it launches, checked offline.

The file parses; every substitution it uses is declared (or built in); every step that
runs embedflow calls a real command whose flags the real argument parsers accept, with a
config that validates; the stage jobs accept the flags `embedflow run` gives them; the
corpus job's Dataflow graph builds with the build's own Beam options (`--dry_run`), and
its sdist is built and staged as Dataflow's `--setup_file` would.

The images and the Vertex AI job: the Dockerfile builds from the versions setup.py pins,
each image variant installs the right TensorFlow build; every job spec under cloud/ names
known fields, a machine, an image (and for a TPU, a topology); every `--worker-pool-spec`
has only keys gcloud accepts. The build's shell steps run under bash with stand-in
`docker`, `gcloud` and `sleep`: every image a step or job runs is one the build pushes, and
the train step retries failing `describe` calls and cancels a job it stops watching.
"""

import ast
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import types

import pytest
import yaml
from packaging.specifiers import SpecifierSet

from embedflow import cli
from embedflow import config as run_config
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
        loaded = run_config.load_config(args.config, args.assignments)
        assert args.output_root == "gs://embedflow-data" and args.run_name == "b-1234"
        assert loaded["inputs"]["corpus"] == ["gs://embedflow-data/corpus/*.bz2"]
        stages_run += args.stages
    assert stages_run == list(chain_run.STEPS)  # every stage, each once, in order


def test_dataflow_options_of_the_corpus_step_are_beam_options(build, monkeypatch):
    from apache_beam.options.pipeline_options import PipelineOptions

    monkeypatch.chdir(REPO)
    argv = dict(_embedflow_calls(build[1]))["corpus"]
    args = chain_run.parse_args(argv[1:])
    beam_args = run_config.load_config(args.config, args.assignments)["corpus"]["beam_args"]
    known = PipelineOptions([]).get_all_options(drop_default=False)
    names = [a[2:].split("=", 1)[0] for a in beam_args]
    assert all(n in known for n in names), [n for n in names if n not in known]
    options = PipelineOptions(beam_args).get_all_options()
    assert options["runner"] == "DataflowRunner" and options["region"] == "us-central1"
    assert options["sdk_container_image"] == "us-central1-docker.pkg.dev/my-project/embedflow/embedflow:b-1234"
    assert options["service_account_email"] == "embedflow-runner@my-project.iam.gserviceaccount.com"
    assert options["temp_location"] == "gs://embedflow-data/tmp" and options["max_num_workers"] == 10


def test_stage_jobs_accept_the_flags_run_gives_them(monkeypatch, tmp_path):
    from jobs import corpus as corpus_job, digits as digits_job, train as train_job

    monkeypatch.chdir(REPO)
    for config_file in (None, "cloud/run.yaml"):
        config = run_config.load_config(config_file, ["corpus.beam_args=--runner=DataflowRunner --project=p"])
        r = chain_run.Run(str(tmp_path), config, name="r")
        _, argv = r.job_argv("corpus", str(tmp_path / "c"))
        args, beam_args = corpus_job.parse_args(argv)
        assert beam_args == ["--runner=DataflowRunner", "--project=p"]  # nothing else leaks to Beam
        assert args.min_count == config["corpus"]["min_count"]
        _, argv = r.job_argv("train", str(tmp_path / "e"))
        assert train_job.parse_args(argv).dim == config["train"]["dim"]
        _, argv = r.job_argv("digits", str(tmp_path / "d"))
        args, beam_args = digits_job.parse_args(argv)
        assert args.layers == config["digits"]["layers"] and beam_args == []
        if chain_run._sentiment_available():  # pylint: disable=protected-access
            from jobs import sentiment as sentiment_job  # pylint: disable=import-outside-toplevel

            _, argv = r.job_argv("sentiment", str(tmp_path / "s"))
            args, beam_args = sentiment_job.parse_args(argv)
            assert beam_args == [] and args.folds == config["sentiment"]["folds"]


def test_corpus_dataflow_graph_builds_offline_and_its_sdist_stages(build, tmp_path, monkeypatch):
    """--dry_run=True builds the Dataflow job (graph, options) without submitting it."""
    import apache_beam as beam
    from apache_beam.runners.portability.stager import Stager

    from jobs import corpus as corpus_job

    monkeypatch.chdir(REPO)
    argv = dict(_embedflow_calls(build[1]))["corpus"]
    run_args = chain_run.parse_args(argv[1:])
    beam_args = run_config.load_config(run_args.config, run_args.assignments)["corpus"]["beam_args"]
    text = tmp_path / "in.txt"
    text.write_text("the cat sat on the mat\n")
    args, extra = corpus_job.parse_args(["--input", str(text), "--output", "gs://embedflow-data/runs/x/corpus",
                                     *beam_args, "--dry_run=True"])
    files = corpus_job.match_inputs(args.input)
    paths = [(m.path, m.size_in_bytes) for m in files]
    options = corpus_job.pipeline_options(extra, "analyze")
    p = beam.Pipeline(options=options)
    # tf.Transform makes its temp directory while the graph is built: a local one here.
    corpus_job.build(p, args, paths, "gs://embedflow-data/runs/x/corpus.partial", str(tmp_path / "tft"))
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
    for module in ("jobs/corpus.py", "pipelines/corpus.py", "core/outputs.py", "schemas/corpus.py",
                   "embedflow/run.py", "trainer/skipgram.py"):
        assert any(m.endswith(module) for m in members), module


# --- Images, job specs and the build's shell steps ------------------------------------

CLOUD = os.path.join(REPO, "cloud")
DOCKERFILE = os.path.join(REPO, "Dockerfile")
README = os.path.join(REPO, "README.md")
SETUP = os.path.join(REPO, "setup.py")
# The keys `gcloud ai custom-jobs create --worker-pool-spec` accepts: no TPU topology.
WORKER_POOL_SPEC_KEYS = {"replica-count", "machine-type", "accelerator-type", "accelerator-count",
                         "container-image-uri", "executor-image-uri", "output-image-uri", "python-module",
                         "script", "local-package-path", "requirements", "extra-dirs", "extra-packages"}
# CustomJobSpec fields a job spec file may use, by message (camelCase, as the API names them).
JOB_SPEC_FIELDS = {
    "CustomJobSpec": {"workerPoolSpecs", "scheduling", "serviceAccount", "network", "reservedIpRanges",
                      "baseOutputDirectory", "enableWebAccess", "enableDashboardAccess", "tensorboard",
                      "experiment", "experimentRun", "models", "persistentResourceId",
                      "protectedArtifactLocationId"},
    "WorkerPoolSpec": {"machineSpec", "replicaCount", "containerSpec", "pythonPackageSpec", "diskSpec",
                       "nfsMounts"},
    "MachineSpec": {"machineType", "acceleratorType", "acceleratorCount", "tpuTopology", "reservationAffinity"},
    "ContainerSpec": {"imageUri", "command", "args", "env"},
    "Scheduling": {"timeout", "restartJobOnWorkerRestart", "strategy", "disableRetries", "maxWaitDuration"},
}
# Images the build runs without building them: Google's builder and gcloud images.
PUBLIC_STEP_IMAGES = ("gcr.io/cloud-builders/docker", "gcr.io/google.com/cloudsdktool/google-cloud-cli:")
JOB_NAME = "projects/123/locations/us-central1/customJobs/42"


def _setup_pins():
    """setup.py's REQUIRED list, read here independently of cloud/image_requirements.py."""
    with open(SETUP, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "REQUIRED":
            return [ast.literal_eval(e) for e in node.value.elts]
    raise AssertionError("setup.py has no REQUIRED")


def _pin(name):
    versions = [r.split("==")[1] for r in _setup_pins()
                if re.fullmatch(re.escape(name) + r"(\[.*\])?", r.split("==")[0])]
    assert len(versions) == 1, (name, _setup_pins())
    return versions[0]


def _job_specs():
    """{path relative to the repository: parsed YAML} of every job spec file under cloud/."""
    specs = {}
    for path in sorted(os.listdir(CLOUD)):
        if path.endswith((".yaml", ".yml")):
            with open(os.path.join(CLOUD, path), encoding="utf-8") as f:
                data = yaml.safe_load(f)
            if isinstance(data, dict) and "workerPoolSpecs" in data:
                specs["cloud/" + path] = data
    return specs


def _google_cloud_section():
    with open(README, encoding="utf-8") as f:
        text = f.read()
    start = text.index("\n## Google Cloud\n")
    end = min(i for i in (text.find("\n## ", start + 1), text.find("\n### `embedflow", start + 1)) if i != -1)
    return text[start:end]


def _code_blocks(markdown):
    return re.findall(r"^```[^\n]*\n(.*?)^```", markdown, flags=re.S | re.M)


def _worker_pool_specs(text):
    """The value of every --worker-pool-spec in shell text (line continuations joined)."""
    text = text.replace("\\\n", " ")
    return re.findall(r"--worker-pool-spec(?:=|\s+)(\S+)", text)


def _bad_worker_pool_keys(value):
    keys = {item.split("=", 1)[0] for item in value.strip("'\"").split(",") if item}
    return keys - WORKER_POOL_SPEC_KEYS


def _step(config, step_id):
    return next(s for s in config["steps"] if s["id"] == step_id)


def _shell(config, step_id, **overrides):
    """The bash script of a step as Cloud Build runs it: substituted, $$ unescaped."""
    step = _step(config, step_id)
    assert step["entrypoint"] == "bash" and step["args"][0] == "-c", step
    values = _values(config)
    values.update(overrides)
    return _expand(step["args"][1], values)


@pytest.fixture
def stubs(tmp_path):
    """Stand-in docker, gcloud and sleep on PATH; every call is logged to calls.log.

    gcloud's `describe` answers with the next line of `states` (FAIL: exits 1; none left:
    JOB_STATE_RUNNING); `create` keeps a copy of its --config file as job-spec.yaml.
    """
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    real_sleep = shutil.which("sleep")
    scripts = {
        "docker": 'echo "docker $*" >> "$STUB_DIR/calls.log"\n',
        "gcloud": """echo "gcloud $*" >> "$STUB_DIR/calls.log"
case "$1 $2 $3" in
  "ai custom-jobs create")
    for a in "$@"; do case "$a" in --config=*) cp "${a#--config=}" "$STUB_DIR/job-spec.yaml" ;; esac; done
    echo "%s" ;;
  "ai custom-jobs describe")
    state=$(head -n 1 "$STUB_DIR/states")
    sed -i 1d "$STUB_DIR/states"
    case "$state" in
      FAIL) echo "ERROR: (gcloud.ai.custom-jobs.describe) 503 Service Unavailable" >&2; exit 1 ;;
      "") echo JOB_STATE_RUNNING ;;
      *) echo "$state" ;;
    esac ;;
  "ai custom-jobs cancel") ;;
  *) echo "unexpected gcloud call: $*" >&2; exit 3 ;;
esac
""" % JOB_NAME,
        # Waits $STUB_SLEEP seconds (default 0), and stops early once the script that
        # started it is gone, so an interrupted script leaves nothing behind.
        "sleep": 'echo "sleep $*" >> "$STUB_DIR/calls.log"\nexec </dev/null >/dev/null 2>&1\n'
                 'end=$((SECONDS + ${STUB_SLEEP:-0}))\n'
                 f'while [ "$SECONDS" -lt "$end" ] && kill -0 "$PPID"; do {real_sleep} 0.1; done\n',
    }
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text("#!/bin/bash\n" + body)
        path.chmod(0o755)
    (tmp_path / "states").write_text("")
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", STUB_DIR=str(tmp_path))
    return tmp_path, env


def _run_shell(script, env, timeout=60):
    return subprocess.run(["bash", "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def _calls(stub_dir, program):
    log = stub_dir / "calls.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return [shlex.split(line)[1:] for line in lines if line.startswith(program + " ")]


def _built_and_pushed(config, env, stub_dir, **overrides):
    """Runs the build-image and push-image steps with a stand-in docker.

    Returns ({tag: (ACCELERATOR build argument, Dockerfile path)}, [pushed tags]).
    """
    for step in ("build-image", "push-image"):
        result = _run_shell(_shell(config, step, **overrides), env)
        assert result.returncode == 0, (step, result.stderr)
    built = {}
    for argv in _calls(stub_dir, "docker"):
        if argv[0] == "build":
            options = dict(zip(argv[1:-1:2], argv[2:-1:2]))  # flag value pairs, then the context
            assert argv[-1] == ".", argv
            dockerfile = os.path.join(REPO, options.get("-f", "Dockerfile"))
            accelerator = options["--build-arg"].split("=", 1)
            assert accelerator[0] == "ACCELERATOR", argv
            built[options["-t"]] = (accelerator[1], dockerfile)
    pushed = [argv[1] for argv in _calls(stub_dir, "docker") if argv[0] == "push"]
    return built, pushed


def _train(config, env, stub_dir, states=(), **overrides):
    (stub_dir / "states").write_text("".join(s + "\n" for s in states))
    return _run_shell(_shell(config, "train", **overrides), env)


def test_every_worker_pool_spec_has_only_keys_gcloud_accepts(build):
    text, _ = build
    readme = "\n".join(_code_blocks(_google_cloud_section()))
    # The check itself catches the key gcloud rejected in the old TPU variant.
    assert _bad_worker_pool_keys("machine-type=ct5lp-hightpu-4t,tpu-topology=2x2") == {"tpu-topology"}
    for value in _worker_pool_specs(text) + _worker_pool_specs(readme):
        assert not _bad_worker_pool_keys(value), value
    # Every job created in the build or the README declares its worker pool one way or the other.
    for source in (text, readme):
        for command in re.findall(r"gcloud ai custom-jobs create(?:[^\n]*\\\n)*[^\n]*", source):
            assert "--worker-pool-spec" in command or "--config=" in command, command
    assert "custom-jobs create" in text


def test_job_spec_files_parse_and_name_a_machine_an_image_and_a_tpu_topology(build):
    _, config = build
    specs = _job_specs()
    assert {"cloud/train-cpu.yaml", "cloud/train-gpu.yaml", "cloud/train-tpu.yaml"} <= set(specs), sorted(specs)
    assert config["substitutions"]["_TRAIN_SPEC"] in specs
    build_timeout = int(config["timeout"].rstrip("s"))

    def check_fields(message, data, where):
        assert isinstance(data, dict), where
        unknown = set(data) - JOB_SPEC_FIELDS[message]
        assert not unknown, f"{where}: not {message} fields: {sorted(unknown)}"

    for path, spec in specs.items():
        check_fields("CustomJobSpec", spec, path)
        pools = spec["workerPoolSpecs"]
        assert isinstance(pools, list) and pools, path
        for pool in pools:
            check_fields("WorkerPoolSpec", pool, path)
            check_fields("MachineSpec", pool["machineSpec"], path)
            check_fields("ContainerSpec", pool["containerSpec"], path)
            machine = pool["machineSpec"]
            assert isinstance(machine["machineType"], str) and machine["machineType"], path
            assert isinstance(pool["containerSpec"]["imageUri"], str) and pool["containerSpec"]["imageUri"], path
            assert int(pool["replicaCount"]) >= 1, path
            accelerator = str(machine.get("acceleratorType", ""))
            if machine["machineType"].startswith("ct") or accelerator.startswith("TPU"):
                assert re.fullmatch(r"\d+x\d+(x\d+)?", str(machine.get("tpuTopology", ""))), path
            if accelerator:
                assert int(machine["acceleratorCount"]) >= 1, path
        check_fields("Scheduling", spec["scheduling"], path)
        assert int(spec["scheduling"]["timeout"].rstrip("s")) <= build_timeout, path
    assert specs["cloud/train-tpu.yaml"]["workerPoolSpecs"][0]["machineSpec"]["tpuTopology"] == "2x2"


def test_dockerfile_builds_from_the_versions_setup_py_pins():
    with open(DOCKERFILE, encoding="utf-8") as f:
        dockerfile = f.read()
    assert re.search(r"^ARG BEAM_VERSION=(\S+)$", dockerfile, re.M).group(1) == _pin("apache-beam")
    froms = re.findall(r"^FROM (\S+)", dockerfile, re.M)
    assert froms == ["apache/beam_python3.11_sdk:${BEAM_VERSION}", "python:3.11-slim"]
    with open(SETUP, encoding="utf-8") as f:
        python_requires = re.search(r'python_requires="([^"]+)"', f.read()).group(1)
    assert SpecifierSet(python_requires).contains("3.11")  # the Python of both images
    assert re.search(r"^ARG ACCELERATOR=cpu$", dockerfile, re.M)  # a plain build is the CPU image
    run = re.search(r"^RUN python /tmp/image_requirements.py (.*)$", dockerfile, re.M).group(1)
    assert '"$ACCELERATOR"' in run and '--beam-version "$BEAM_VERSION"' in run
    copied = [path for source in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, re.M) for path in source.split()]
    for path in copied:
        assert os.path.exists(os.path.join(REPO, path)), path
    # `pip install .` in the image installs only the packages copied in: every one setup.py names.
    with open(SETUP, encoding="utf-8") as f:
        setup = ast.parse(f.read())
    include = next(k.value for n in ast.walk(setup) if isinstance(n, ast.Call) for k in n.keywords
                   if k.arg == "include")
    packages = {p for p in ast.literal_eval(include) if "." not in p and "*" not in p}
    assert packages and packages <= set(copied), packages - set(copied)


def test_each_image_installs_setup_py_pins_with_the_right_tensorflow_build(tmp_path):
    def requirements(*args):
        return subprocess.run([sys.executable, os.path.join(CLOUD, "image_requirements.py"), *args,
                               "--setup", SETUP], capture_output=True, text=True, check=False)

    beam, tensorflow = _pin("apache-beam"), _pin("tensorflow")
    cpu = requirements("cpu", "--beam-version", beam)
    assert cpu.returncode == 0, cpu.stderr
    assert cpu.stdout.split() == _setup_pins()
    assert f"tensorflow=={tensorflow}" in cpu.stdout.split()
    gpu = requirements("gpu", "--beam-version", beam)
    assert gpu.returncode == 0, gpu.stderr
    assert gpu.stdout.split() == [f"tensorflow[and-cuda]=={tensorflow}" if r == f"tensorflow=={tensorflow}" else r
                                  for r in _setup_pins()]
    tpu = requirements("tpu", "--beam-version", beam)
    assert tpu.returncode != 0 and "tensorflow-tpu" in tpu.stderr and not tpu.stdout
    other_beam = requirements("cpu", "--beam-version", "2.0.0")
    assert other_beam.returncode != 0 and "BEAM_VERSION" in other_beam.stderr
    # A setup.py that pins another TensorFlow changes what the GPU image installs.
    moved = tmp_path / "setup.py"
    with open(SETUP, encoding="utf-8") as f:
        moved.write_text(f.read().replace(f'"tensorflow=={tensorflow}"', '"tensorflow==9.9.9"'))
    gpu = subprocess.run([sys.executable, os.path.join(CLOUD, "image_requirements.py"), "gpu", "--setup", str(moved)],
                         capture_output=True, text=True, check=True)
    assert "tensorflow[and-cuda]==9.9.9" in gpu.stdout.split()


def test_train_step_script_is_valid_bash_and_cancels_an_unfinished_job(build):
    script = _shell(build[1], "train")
    check = subprocess.run(["bash", "-n", "-c", script], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr
    assert "trap cancel_unfinished EXIT" in script and "trap 'exit 143' TERM" in script
    assert re.search(r'gcloud ai custom-jobs cancel "\$job"', script)
    assert "--worker-pool-spec" not in script and "--sdk_location" not in build[0]


def test_every_image_a_step_or_job_runs_is_one_the_build_pushes(build, stubs):
    text, config = build
    stub_dir, env = stubs
    values = _values(config)
    image = _expand(values["_IMAGE"], values)
    # The default (CPU) spec: one image, for Dataflow, the build and the Vertex AI job.
    built, pushed = _built_and_pushed(config, env, stub_dir)
    assert built == {image: ("cpu", DOCKERFILE)} and pushed == [image]
    for step in config["steps"]:
        name = _expand(step["name"], values)
        assert name in pushed or name.startswith(PUBLIC_STEP_IMAGES), (step["id"], name)
    sdk_image = re.search(r"--sdk_container_image=(\S+)", text).group(1)
    assert _expand(sdk_image, values) == image  # Dataflow workers get the CPU image
    result = _train(config, env, stub_dir, states=["JOB_STATE_SUCCEEDED"])
    assert result.returncode == 0, result.stderr
    with open(stub_dir / "job-spec.yaml", encoding="utf-8") as f:
        pool = yaml.safe_load(f)["workerPoolSpecs"][0]
    assert pool["containerSpec"]["imageUri"] == image and pool["machineSpec"] == {"machineType": "n1-highcpu-32"}


def test_a_gpu_training_spec_builds_and_runs_the_gpu_image(build, stubs):
    _, config = build
    stub_dir, env = stubs
    values = _values(config)
    image, gpu_image = _expand(values["_IMAGE"], values), _expand(values["_GPU_IMAGE"], values)
    spec = {"_TRAIN_SPEC": "cloud/train-gpu.yaml", "_TRAIN_MACHINE": "n1-standard-8"}
    built, pushed = _built_and_pushed(config, env, stub_dir, **spec)
    # The CPU image for Dataflow and the build, the GPU image for Vertex AI.
    assert built == {image: ("cpu", DOCKERFILE), gpu_image: ("gpu", DOCKERFILE)}
    assert sorted(pushed) == sorted(built)
    result = _train(config, env, stub_dir, states=["JOB_STATE_SUCCEEDED"], **spec)
    assert result.returncode == 0, result.stderr
    with open(stub_dir / "job-spec.yaml", encoding="utf-8") as f:
        job = yaml.safe_load(f)
    assert [p["containerSpec"]["imageUri"] for p in job["workerPoolSpecs"]] == [gpu_image]
    assert job["workerPoolSpecs"][0]["machineSpec"] == {"machineType": "n1-standard-8",
                                                        "acceleratorType": "NVIDIA_TESLA_T4", "acceleratorCount": 1}


def _created_job(stub_dir):
    """The job the last `gcloud ai custom-jobs create` asks for, as gcloud builds it: the
    --config file, with the command line's --command and --args (repeated --args add up)
    put into every worker pool's container."""
    create = [c for c in _calls(stub_dir, "gcloud") if c[:3] == ["ai", "custom-jobs", "create"]][-1]

    def values(flag):
        return [v for a in create if a.startswith(flag + "=") for v in a.split("=", 1)[1].split(",")]

    with open(stub_dir / "job-spec.yaml", encoding="utf-8") as f:
        job = yaml.safe_load(f)
    for pool in job["workerPoolSpecs"]:
        pool["containerSpec"].update(command=values("--command"), args=values("--args"))
    return job


def _trainer_strategy(container):
    """The --strategy the train job gets from a replica's `embedflow run --stages=train`."""
    from jobs import train as train_job  # pylint: disable=import-outside-toplevel

    assert container["command"] == ["embedflow"] and container["args"][0] == "run", container
    args = chain_run.parse_args(container["args"][1:])
    assert args.stages == ["train"]
    loaded = run_config.load_config(args.config, args.assignments)
    r = chain_run.Run(args.output_root, loaded, name=args.run_name)
    _, argv = r.job_argv("train", r.stage_dir("train"))
    return train_job.parse_args(argv).strategy


def test_the_multi_worker_spec_runs_every_replica_with_strategy_multiworker(build, stubs, monkeypatch):
    _, config = build
    stub_dir, env = stubs
    monkeypatch.chdir(REPO)  # cloud/run.yaml, as the image's /app holds it
    values = _values(config)
    image = _expand(values["_IMAGE"], values)
    spec = {"_TRAIN_SPEC": "cloud/train-workers.yaml"}
    built, pushed = _built_and_pushed(config, env, stub_dir, **spec)
    assert built == {image: ("cpu", DOCKERFILE)} and pushed == [image]  # no GPU image
    # The one-pool default keeps the config's strategy (cloud/run.yaml: auto).
    result = _train(config, env, stub_dir, states=["JOB_STATE_SUCCEEDED"])
    assert result.returncode == 0, result.stderr
    (pool,) = _created_job(stub_dir)["workerPoolSpecs"]
    assert not [a for a in pool["containerSpec"]["args"] if a.startswith("--set=train.strategy")]
    assert _trainer_strategy(pool["containerSpec"]) == "auto"

    result = _train(config, env, stub_dir, states=["JOB_STATE_SUCCEEDED"], **spec)
    assert result.returncode == 0, result.stderr
    job = _created_job(stub_dir)
    chief, workers = job["workerPoolSpecs"]  # Vertex AI: the primary replica, then the workers
    from trainer import exchange  # pylint: disable=import-outside-toplevel

    # As many machines as the fused kernel's workers may be (the trainer refuses more).
    assert chief["replicaCount"] == 1 and 1 + workers["replicaCount"] == exchange.MAX_FUSED_WORKERS
    for pool in (chief, workers):
        assert pool["machineSpec"] == {"machineType": "n1-highcpu-32"}
        assert pool["containerSpec"]["imageUri"] == image
        assert _trainer_strategy(pool["containerSpec"]) == "multiworker"
    assert job["scheduling"]["restartJobOnWorkerRestart"] is True


def test_vertex_tf_config_of_the_multi_worker_spec_gives_each_replica_its_place(monkeypatch):
    """TF_CONFIG as Vertex AI sets it for cloud/train-workers.yaml, read by the trainer's
    resolver: the chief is worker 0 and alone exports; no two replicas share checkpoints."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from trainer import skipgram  # pylint: disable=import-outside-toplevel

    with open(os.path.join(CLOUD, "train-workers.yaml"), encoding="utf-8") as f:
        chief_pool, worker_pool = yaml.safe_load(f)["workerPoolSpecs"]
    workers = int(worker_pool["replicaCount"])
    assert int(chief_pool["replicaCount"]) == 1
    cluster = {"chief": ["cmle-training-chief-0:2222"],
               "worker": [f"cmle-training-worker-{i}:2222" for i in range(workers)]}
    output = "gs://embedflow-data/runs/b-1234/embeddings"
    seen = []
    for task_type, index in [("chief", 0)] + [("worker", i) for i in range(workers)]:
        monkeypatch.setenv("TF_CONFIG", json.dumps(
            {"cluster": cluster, "task": {"type": task_type, "index": index}, "environment": "cloud"}))
        strategy = types.SimpleNamespace(cluster_resolver=tf.distribute.cluster_resolver.TFConfigClusterResolver())
        seen.append((skipgram.worker_position(strategy), skipgram.is_chief(strategy),
                     skipgram.checkpoint_dir(output, strategy)))
    assert [(position, chief) for position, chief, _ in seen] == [((i, workers + 1), i == 0)
                                                                  for i in range(workers + 1)]
    assert seen[0][2] == output + ".checkpoints" and len({d for _, _, d in seen}) == workers + 1


def test_the_waiting_tpu_spec_is_refused_before_any_job_is_created(build, stubs):
    _, config = build
    stub_dir, env = stubs
    result = _train(config, env, stub_dir, _TRAIN_SPEC="cloud/train-tpu.yaml")
    assert result.returncode != 0
    assert "{{tpu_image}}" in result.stdout and "cloud/train-tpu.yaml" in result.stderr
    assert not _calls(stub_dir, "gcloud")


def test_train_step_creates_the_job_from_the_spec_and_succeeds_without_cancelling(build, stubs):
    _, config = build
    stub_dir, env = stubs
    result = _train(config, env, stub_dir, states=["JOB_STATE_PENDING", "JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED"])
    assert result.returncode == 0, result.stderr
    calls = _calls(stub_dir, "gcloud")
    create = calls[0]
    assert create[:3] == ["ai", "custom-jobs", "create"]
    assert any(a.startswith("--config=") for a in create) and "--command=embedflow" in create
    assert not any(a.startswith("--worker-pool-spec") for a in create)
    assert [c[2] for c in calls[1:]] == ["describe"] * 3 and calls[1][3] == JOB_NAME


def test_train_step_retries_transient_describe_failures(build, stubs):
    _, config = build
    stub_dir, env = stubs
    states = ["FAIL", "FAIL", "JOB_STATE_RUNNING", "FAIL", "FAIL", "FAIL", "FAIL", "JOB_STATE_SUCCEEDED"]
    result = _train(config, env, stub_dir, states=states)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("describe failed") == 6
    assert not [c for c in _calls(stub_dir, "gcloud") if c[2] == "cancel"]


def test_train_step_gives_up_after_five_failed_describes_and_cancels_the_job(build, stubs):
    _, config = build
    stub_dir, env = stubs
    result = _train(config, env, stub_dir, states=["JOB_STATE_RUNNING"] + ["FAIL"] * 5 + ["JOB_STATE_SUCCEEDED"])
    assert result.returncode != 0
    calls = _calls(stub_dir, "gcloud")
    assert [c[2] for c in calls].count("describe") == 6
    assert calls[-1][:4] == ["ai", "custom-jobs", "cancel", JOB_NAME] and "--region=us-central1" in calls[-1]


def test_train_step_fails_without_cancelling_a_job_that_failed_on_its_own(build, stubs):
    _, config = build
    stub_dir, env = stubs
    result = _train(config, env, stub_dir, states=["JOB_STATE_RUNNING", "JOB_STATE_FAILED"])
    assert result.returncode == 1 and "JOB_STATE_FAILED" in result.stdout
    assert not [c for c in _calls(stub_dir, "gcloud") if c[2] == "cancel"]


@pytest.mark.parametrize("signal_name,status", [("SIGTERM", 143), ("SIGINT", 130)])
def test_an_interrupted_train_step_cancels_its_job(build, stubs, signal_name, status):
    _, config = build
    stub_dir, env = stubs
    env = dict(env, STUB_SLEEP="30")  # the job runs on; the step waits between describes
    process = subprocess.Popen(["bash", "-c", _shell(config, "train")], cwd=REPO, env=env,  # pylint: disable=consider-using-with
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not _calls(stub_dir, "sleep") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _calls(stub_dir, "sleep"), "the step never reached its wait"
        started = time.monotonic()
        process.send_signal(getattr(signal, signal_name))
        _, stderr = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == status, stderr
    assert time.monotonic() - started < 10  # handled at once, not after the 30 s wait
    cancels = [c for c in _calls(stub_dir, "gcloud") if c[2] == "cancel"]
    assert cancels == [["ai", "custom-jobs", "cancel", JOB_NAME, "--region=us-central1"]], stderr


def test_google_cloud_docs_match_the_build(build):
    _, config = build
    section = _google_cloud_section()
    blocks = _code_blocks(section)
    assert blocks
    for block in blocks:
        check = subprocess.run(["bash", "-n", "-c", block], capture_output=True, text=True, check=False)
        assert check.returncode == 0, (check.stderr, block)
        # An unquoted glob stops zsh ("no matches found") before gcloud sees it.
        for line in block.replace("\\\n", " ").splitlines():
            quote, unquoted = None, []
            for char in line:
                if quote:
                    quote = None if char == quote else quote
                elif char in "'\"":
                    quote = char
                elif char == "#":
                    break
                else:
                    unquoted.append(char)
            assert not set("*?[") & set(unquoted), line
    documented = set(re.findall(r"`(_[A-Z_]+)`", section))
    assert set(config["substitutions"]) <= documented, set(config["substitutions"]) - documented
    for path in set(re.findall(r"`(cloud/[^`\s]+)`", section)):
        assert os.path.exists(os.path.join(REPO, path)), path
    commands = "\n".join(blocks).replace("\\\n", " ").splitlines()  # one line per command
    enabled = next(c for c in commands if "gcloud services enable" in c)
    for api in ("cloudbuild", "dataflow", "aiplatform", "artifactregistry", "cloudscheduler", "storage", "iam"):
        assert f"{api}.googleapis.com" in enabled.split(), api
    agent = [c for c in commands if "gcp-sa-aiplatform-cc.iam.gserviceaccount.com" in c]
    assert agent and all("repositories add-iam-policy-binding embedflow" in c and "roles/artifactregistry.reader" in c
                         for c in agent), agent
    assert "gcr.io/google.com/cloudsdktool/cloud-sdk" not in build[0]  # the legacy image name
