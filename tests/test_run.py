"""`embedflow run`: the whole chain on tiny inputs, reuse by fingerprint, --force, gates, config errors."""

import json
import os
import re
import shutil
import time

import numpy as np
import pytest
import yaml

from embedflow import cli
from embedflow import config as run_config
from embedflow import promotion
from embedflow import run as chain_run
from tests import fixtures

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(REPO, "sample", "digits", "optdigits", "optdigits-orig.tes.gz")


def tiny_eval_inputs(root):
    """Writes the analogy, similarity and polarity inputs of a tiny run under root/in.

    Returns:
      (analogies file, similarity file, polarity directory).
    """
    analogies = fixtures.write(str(root / "in" / "analogies.txt"),
                               ": topics\ncat dog red green\nred blue hammer saw\nhammer saw cat cow\n")
    similarity = fixtures.write(str(root / "in" / "sim.tsv"), "cat\tdog\t9\ncat\thammer\t1\nred\tblue\t8\n")
    rng = np.random.default_rng(0)
    animals, tools = fixtures.TOPICS["animals"], fixtures.TOPICS["tools"]
    fixtures.write(str(root / "in" / "polarity" / "tiny.pos"),
                   "".join(" ".join(rng.choice(animals + ["the"], 8)) + "\n" for _ in range(150)))
    fixtures.write(str(root / "in" / "polarity" / "tiny.neg"),
                   "".join(" ".join(rng.choice(tools + ["the"], 8)) + "\n" for _ in range(150)))
    return analogies, similarity, str(root / "in" / "polarity")


def _tiny_config(root):
    """A config whose whole chain runs in well under a minute."""
    text = fixtures.write(str(root / "in" / "topics.txt"), fixtures.topic_corpus(sentences=400))
    analogies, similarity, _ = tiny_eval_inputs(root)
    config = {
        "inputs": {"corpus": [text], "corpus_format": "text", "analogies": analogies, "similarity": [similarity],
                   "digits": [DIGITS], "digits_eval": [], "sentiment": [str(root / "in" / "polarity")]},
        "corpus": {"min_count": 1, "num_shards": 2},
        "train": {"dim": 16, "epochs": 1, "batch_size": 512},
        "evaluate": {"probe_words": ["cat", "hammer", "nosuchword"], "topn": 3, "pca_words": 20},
        "digits": {"layers": "1024-32-10", "epochs": 2},
        "sentiment": {"epochs": 2, "hidden": 8, "curve_sizes": "60,120", "compare_scratch": False},
        "gates": {"min_analogy_accuracy": 0.0, "min_digit_accuracy": 0.5, "min_sentiment_accuracy": 0.0,
                  "max_regression": 0.05},
    }
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    root = tmp_path_factory.mktemp("chain")
    config = _tiny_config(root)
    out = str(root / "out")
    started = time.time()
    manifest = chain_run.run(["--config", config, "--output-root", out])
    return {"config": config, "out": out, "first": manifest, "first_seconds": time.time() - started}


def _latest(out):
    with open(os.path.join(out, chain_run.LATEST_FILE), encoding="utf-8") as f:
        return f.read().strip()


def _run_dir(out, name):
    return os.path.join(out, chain_run.RUNS_DIR, name)


def test_first_run_computes_every_stage_writes_a_report_and_promotes(chain):
    m, out = chain["first"], chain["out"]
    assert m["status"] == "promoted" and _latest(out) == m["run"]
    run_dir = _run_dir(out, m["run"])
    expected = ["corpus", "train", "evaluate", "digits"] + (["sentiment"] if chain_run._sentiment_available() else [])
    assert list(m["stages"]) == expected
    for stage, record in m["stages"].items():
        assert record["status"] == "ran"
        stage_dir = os.path.join(run_dir, chain_run.STAGE_SPECS[stage].directory)
        assert os.path.exists(os.path.join(stage_dir, "COMPLETED")), stage
        assert os.path.exists(os.path.join(run_dir, stage + chain_run.STAGE_RECORD_SUFFIX))
    on_disk = json.load(open(os.path.join(run_dir, "manifest.json"), encoding="utf-8"))
    assert on_disk["run"] == m["run"] and on_disk["status"] == "promoted"
    assert on_disk["inputs"]["corpus"]["fingerprint"] and on_disk["inputs"]["corpus"]["files"]
    assert on_disk["versions"]["tensorflow"] and "commit" in on_disk["git"]
    assert on_disk["config"]["train"]["dim"] == 16
    assert 0.5 <= m["metrics"]["digit_accuracy"] <= 1 and "analogy_accuracy" in m["metrics"]
    assert all(g["passed"] for g in m["gates"])
    md = open(os.path.join(run_dir, "report.md"), encoding="utf-8").read()
    # The verdict leads, then the headline metrics with their change against latest.
    assert md.splitlines()[2].startswith("**Promoted: every gate passed")
    assert md.index("## Headline metrics") < md.index("## Stages")
    # Where the vectors came from, in the headline area: trained here, the model named.
    assert md.splitlines()[4].startswith("Vectors: trained, skip-gram") and "16 dimensions, 1 epoch," in md
    assert md.index("## Vectors") < md.index("## Stages") and "| stage | train: ran |" in md
    assert "| digit_accuracy |" in md and "| cat |" in md and "nosuchword" in md
    if "sentiment" in expected:  # the sample's sentiment section adapts the vectors first
        assert ("over 3 folds or splits; pretrained vectors adapted to each fold's training texts, "
                "without their labels, for 50 epochs)") in md
    page = open(os.path.join(run_dir, "report.html"), encoding="utf-8").read()
    images = re.findall(r"<img src='([^']+)'", page)
    assert len(images) >= 3  # every image the page shows is a PNG beside it
    for src in images:
        with open(os.path.join(run_dir, src), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", src
    for plot in ("pca.png", "confusion_matrix.png"):
        with open(os.path.join(run_dir, "report", plot), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    evaluation = os.path.join(run_dir, "evaluation")
    pca = json.load(open(os.path.join(evaluation, "pca.json"), encoding="utf-8"))
    assert len(pca["words"]) == len(pca["xy"]) == 20


def _chromium():
    """The path of a Chromium or Chrome binary on this machine, or None."""
    named = os.environ.get("EMBEDFLOW_CHROMIUM")
    if named:
        return named
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


def test_the_html_report_renders_in_a_browser_with_every_image_loaded(chain):
    browser_path = _chromium()
    if not browser_path:
        pytest.skip("no Chromium on this machine: ./test.sh installs Debian's chromium when run as root, "
                    "or set EMBEDFLOW_CHROMIUM to a Chromium binary")
    from playwright.sync_api import sync_playwright
    report = os.path.join(_run_dir(chain["out"], chain["first"]["run"]), "report.html")
    problems = []
    # The flags keep a headless Chromium off the network: the report must need nothing but its own files.
    flags = ["--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", "--disable-gpu"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=flags)
        try:
            page = browser.new_page(viewport={"width": 640, "height": 900})
            page.on("console", lambda m: m.type == "error" and problems.append(m.text))
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("requestfailed", lambda r: problems.append(f"failed: {r.url}"))
            page.goto("file://" + report, wait_until="load")
            images = page.evaluate("""Array.from(document.images).map(i => ({
                src: i.getAttribute('src'), alt: i.alt, loaded: i.complete && i.naturalWidth > 0,
                right: i.getBoundingClientRect().right}))""")
            shown = page.evaluate("""({title: document.title, h1: document.querySelector('h1').innerText,
                lead: document.querySelector('h1 + p').innerText,
                width: document.documentElement.scrollWidth, viewport: window.innerWidth,
                body: document.body.getBoundingClientRect().right})""")
        finally:
            browser.close()
    assert problems == []
    page_source = open(report, encoding="utf-8").read()
    assert len(images) == page_source.count("<img ") >= 3
    assert all(i["loaded"] and i["alt"] for i in images), images
    # Nothing wider than the page: no plot runs past the body, no sideways scrolling in a 640-pixel window.
    assert all(i["right"] <= shown["body"] + 0.5 for i in images), (images, shown)
    assert shown["width"] <= shown["viewport"], shown
    assert shown["title"] == shown["h1"] == f"embedflow run {chain['first']['run']}"
    assert shown["lead"].startswith("Promoted: every gate passed")


def test_second_run_reuses_every_stage_by_fingerprint(chain):
    out = chain["out"]
    started = time.time()
    m = chain_run.run(["--config", chain["config"], "--output-root", out])
    seconds = time.time() - started
    assert m["run"] != chain["first"]["run"]
    assert {r["status"] for r in m["stages"].values()} == {"reused"}
    assert {r["from_run"] for r in m["stages"].values()} == {chain["first"]["run"]}
    assert seconds < 20 and seconds < chain["first_seconds"] / 3, (seconds, chain["first_seconds"])
    # reused stages are copies: the run stands alone, promoted with the same metrics
    corpus_dir = os.path.join(_run_dir(out, m["run"]), "corpus")
    assert os.path.isdir(corpus_dir) and not os.path.islink(corpus_dir)
    assert os.path.exists(os.path.join(corpus_dir, "COMPLETED"))
    assert m["metrics"] == chain["first"]["metrics"] and _latest(out) == m["run"]


def test_force_recomputes_the_selected_stage_and_reuses_the_rest(chain):
    m = chain_run.run(["--config", chain["config"], "--output-root", chain["out"], "--force",
                       "--stages", "corpus"])
    assert m["stages"]["corpus"]["status"] == "ran"
    assert m["stages"]["train"]["status"] == "reused" and m["stages"]["digits"]["status"] == "reused"
    assert m["status"] == "complete"


def test_failing_gate_leaves_latest_where_it_was(chain):
    out = chain["out"]
    before = _latest(out)
    with pytest.raises(chain_run.GatesFailed, match="min_digit_accuracy"):
        chain_run.run(["--config", chain["config"], "--output-root", out, "--set", "gates.min_digit_accuracy=1.0"])
    assert _latest(out) == before
    runs = sorted(os.listdir(os.path.join(out, chain_run.RUNS_DIR)))
    gated = json.load(open(os.path.join(_run_dir(out, runs[-1]), "manifest.json"), encoding="utf-8"))
    assert gated["status"] == "gated" and not gated["promotion"]["promoted"]
    assert "NOT promoted" in open(os.path.join(_run_dir(out, runs[-1]), "report.md"), encoding="utf-8").read()


def test_warm_start_passes_the_earlier_vectors_to_the_trainer(chain):
    out, first = chain["out"], chain["first"]["run"]
    m = chain_run.run(["--config", chain["config"], "--output-root", out, "--warm-start-from", first,
                       "--stages", "corpus,train"])
    assert m["stages"]["train"]["status"] == "ran"  # a warm start is a different training
    assert m["status"] == "incomplete" and "evaluate" not in m["stages"]
    info = json.load(open(os.path.join(_run_dir(out, m["run"]), "embeddings", "info.json"), encoding="utf-8"))
    assert info["parameters"]["init_from"] == os.path.join(_run_dir(out, first), "embeddings")

    # The rest of the same run in a later step (as Cloud Build does): the warm-started
    # training is taken as the run holds it, downstream stages follow from it.
    rest = chain_run.run(["--config", chain["config"], "--output-root", out, "--run-name", m["run"],
                          "--stages", "evaluate,digits,sentiment,report,promote",
                          "--set", "gates.max_regression=null"])
    assert rest["run"] == m["run"] and rest["status"] == "promoted" and _latest(out) == m["run"]
    assert rest["stages"]["train"]["status"] == "ran" and rest["stages"]["evaluate"]["status"] == "ran"
    assert rest["stages"]["digits"]["status"] == "reused"
    assert rest["warm_start_from"]["run"] == first


def test_warm_start_from_an_embeddings_output_directory(chain):
    """An import-vectors or train output (not a run) can start the trainer too."""
    embeddings = os.path.join(_run_dir(chain["out"], chain["first"]["run"]), "embeddings")
    config = run_config.load_config(chain["config"])
    resolved = chain_run.Run(chain["out"], config, warm_start_from=embeddings).warm_start
    assert resolved["embeddings"] == embeddings and resolved["vocab_size"] > 0
    _, argv = chain_run.Run(chain["out"], config, warm_start_from=embeddings).job_argv("train", "x")
    assert argv[argv.index("--init-from") + 1] == embeddings


def test_trainer_init_from_copies_rows_of_shared_words(chain):
    from trainer import skipgram
    from trainer.vectors import WordVectors

    embeddings = os.path.join(_run_dir(chain["out"], chain["first"]["run"]), "embeddings")
    old = WordVectors.load(embeddings)
    model = skipgram.SkipGram(4, old.dim, seed=3)
    random_row = model.inputs.numpy()[0].copy()
    copied = skipgram.warm_start(model, ["brand-new-word", *old.index_to_key[:3]], embeddings)
    assert copied == 3
    rows = model.inputs.numpy()
    np.testing.assert_array_equal(rows[1:], old.vectors[:3])
    np.testing.assert_array_equal(rows[0], random_row)
    with pytest.raises(ValueError, match="--dim"):
        skipgram.warm_start(skipgram.SkipGram(2, old.dim + 1, seed=3), ["cat", "dog"], embeddings)


@pytest.mark.parametrize("tf_config, follower", [
    (None, False),
    ({"cluster": {"chief": ["a:1"], "worker": ["b:1"]}, "task": {"type": "chief", "index": 0}}, False),
    ({"cluster": {"chief": ["a:1"], "worker": ["b:1"]}, "task": {"type": "worker", "index": 0}}, True),
    ({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}, False),
    ({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}, True),
])
def test_the_chief_is_tf_distributes_chief_task_else_worker_0(tf_config, follower):
    environ = {"TF_CONFIG": json.dumps(tf_config)} if tf_config else {}
    assert chain_run.follower_replica(environ) is follower


def test_a_worker_replica_trains_but_leaves_copies_and_records_to_the_chief(chain, monkeypatch):
    out = chain["out"]
    chain_run.run(["--config", chain["config"], "--output-root", out, "--stages", "corpus", "--run-name", "workers"])
    run_dir = _run_dir(out, "workers")
    # A run whose corpus is complete and train not yet (this one copied it: undo that).
    shutil.rmtree(os.path.join(run_dir, chain_run.STAGE_SPECS["train"].directory))
    os.remove(os.path.join(run_dir, "train" + chain_run.STAGE_RECORD_SUFFIX))
    manifest = open(os.path.join(run_dir, "manifest.json"), encoding="utf-8").read()
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"chief": ["a:1"], "worker": ["b:1"]},
                                                "task": {"type": "worker", "index": 0}}))
    # train is reusable from the first run: only the chief copies it.
    assert chain_run.run(["--config", chain["config"], "--output-root", out, "--stages", "train",
                          "--run-name", "workers"]) == {}
    assert not os.path.exists(os.path.join(run_dir, "train" + chain_run.STAGE_RECORD_SUFFIX))
    assert not os.path.exists(os.path.join(run_dir, chain_run.STAGE_SPECS["train"].directory))
    # Forced, the worker trains (beside the chief) and still writes no record or manifest.
    trained = []
    monkeypatch.setattr(chain_run.Run, "_run_stage_job", lambda self, stage, out_dir: trained.append(stage))
    chain_run.run(["--config", chain["config"], "--output-root", out, "--stages", "train", "--run-name", "workers",
                   "--force"])
    assert trained == ["train"]
    assert not os.path.exists(os.path.join(run_dir, "train" + chain_run.STAGE_RECORD_SUFFIX))
    assert open(os.path.join(run_dir, "manifest.json"), encoding="utf-8").read() == manifest


@pytest.mark.parametrize("text, message", [
    ("train:\n  dims: 3\n", "unknown key train.dims"),
    ("train:\n  epochs: 0\n", "train.epochs must be an integer >= 1, got 0"),
    ("gates:\n  min_digit_accuracy: high\n", "gates.min_digit_accuracy must be a number"),
    ("trainer:\n  epochs: 1\n", "unknown section 'trainer'"),
    ("inputs:\n  corpus: []\n", "inputs.corpus must name at least one path"),
    ("train: [1, 2\n", "not valid YAML"),
    ("- 1\n", "top level must be a mapping"),
])
def test_bad_config_is_an_error_naming_the_key(tmp_path, capsys, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    argv = ["--config", str(path), "--output-root", str(tmp_path / "out")]
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        chain_run.run(argv)
    assert cli.run_job("run", chain_run.run, argv) == 2
    assert message in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out" / "runs")


def test_bad_json_config_and_set_are_errors_naming_the_key(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"digits": {"epochs": "many"}}))
    with pytest.raises(ValueError, match="digits.epochs"):
        run_config.load_config(str(path))
    with pytest.raises(ValueError, match="--set train.dim=-1: train.dim"):
        run_config.load_config(None, ["train.dim=-1"])
    with pytest.raises(ValueError, match="SECTION.KEY=VALUE"):
        run_config.load_config(None, ["epochs=1"])
    assert run_config.load_config(None, ["train.epochs=1", "inputs.corpus=a.txt"])["inputs"]["corpus"] == ["a.txt"]


def test_missing_input_fails_before_any_work(tmp_path):
    with pytest.raises(FileNotFoundError, match="inputs.corpus"):
        chain_run.run(["--output-root", str(tmp_path), "--set", f"inputs.corpus={tmp_path}/none-*.txt"])
    assert not os.path.exists(tmp_path / "runs")


def test_gates_check_minimums_and_regressions_against_latest():
    gates = {"min_analogy_accuracy": 0.1, "min_digit_accuracy": 0.9, "min_sentiment_accuracy": None,
             "max_regression": 0.02}
    new = {"analogy_accuracy": 0.3, "digit_accuracy": 0.95, "similarity_spearman": 0.5}
    assert all(g["passed"] for g in promotion.check_gates(new, gates, None))
    latest = {"analogy_accuracy": 0.33, "digit_accuracy": 0.96, "similarity_spearman": 0.5}
    failed = [g for g in promotion.check_gates(new, gates, latest) if not g["passed"]]
    assert [(g["gate"], g["metric"]) for g in failed] == [("max_regression", "analogy_accuracy")]
    missing = promotion.check_gates({"analogy_accuracy": 0.3}, gates, None)
    assert [g["metric"] for g in missing if not g["passed"]] == ["digit_accuracy"]


def test_the_default_run_finds_the_bundled_sample_from_any_directory(tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = run_config.load_config()
    assert config["inputs"]["corpus"] == [os.path.join(REPO, "sample", "corpus", "*.gz")]
    manifest = chain_run.run(["--stages", "corpus", "--output-root", "out", "--set", "corpus.min_count=200"])
    assert manifest["status"] == "incomplete" and manifest["stages"]["corpus"]["status"] == "ran"
    assert [f["path"] for f in manifest["inputs"]["corpus"]["files"]] == [
        os.path.join(REPO, "sample", "corpus", f"wiki_{i:02d}.gz") for i in range(32)]
    corpus_dir = os.path.join("out", chain_run.RUNS_DIR, manifest["run"], "corpus")
    assert os.path.exists(os.path.join(corpus_dir, "COMPLETED"))
    assert os.listdir(elsewhere) == ["out"]  # nothing else written where it ran


def test_the_installed_sample_is_found_under_the_prefix(tmp_path, monkeypatch):
    installed = tmp_path / "prefix" / "share" / "embedflow" / "sample"
    fixtures.write(str(installed / "ATTRIBUTION.md"), "sample\n")
    monkeypatch.setattr(run_config.sys, "prefix", str(tmp_path / "prefix"))
    monkeypatch.setattr(run_config.os.path, "abspath", lambda p: str(tmp_path / "site" / "embedflow" / "x.py"))
    assert run_config.sample_dir() == str(installed)


def test_analogy_pairs_are_projected_and_drawn_as_arrows(tmp_path):
    from embedflow import report  # pylint: disable=import-outside-toplevel
    from trainer import evaluate  # pylint: disable=import-outside-toplevel
    from trainer.vectors import WordVectors  # pylint: disable=import-outside-toplevel

    words = ["france", "paris", "italy", "rome", "he", "she", "king", "queen", "his", "her", "spain"]
    rng = np.random.default_rng(0)
    vectors = WordVectors(words, rng.normal(size=(len(words), 8)).astype(np.float32))
    questions = [("capital-common-countries", ("paris", "france", "rome", "italy")),  # capital first
                 ("capital-common-countries", ("rome", "italy", "madrid", "spain")),  # madrid: unknown
                 ("family", ("he", "she", "king", "queen")), ("family", ("he", "she", "his", "her")),
                 ("gram1-adjective-to-adverb", ("king", "queen", "he", "she"))]
    groups = evaluate.analogy_pairs(questions, vectors)
    assert groups == {"country-capital": [("france", "paris"), ("italy", "rome")],
                      "male-female": [("he", "she"), ("king", "queen"), ("his", "her")]}
    projected = evaluate.project_pairs(vectors, groups)
    assert sorted(projected["male-female"]["xy"]) == ["he", "her", "his", "king", "queen", "she"]
    assert abs(sum(x for x, _ in projected["male-female"]["xy"].values())) < 1e-4  # centred
    path = tmp_path / "pairs.png"
    report.plot_pairs(projected, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
