"""`embedflow run` with `inputs.pretrained_vectors`: an import stage replaces corpus and
train, the report says where the vectors came from, the import is reused by fingerprint
and re-run when the file changes, a bad file fails before any stage is published."""

import json
import os
import re

import numpy as np
import pytest
import yaml

from embedflow import cli
from embedflow import report as run_report
from embedflow import run as chain_run
from tests import fixtures
from tests.test_run import tiny_eval_inputs
from trainer.formats import write_vectors

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(REPO, "sample", "digits", "optdigits", "optdigits-orig.tes.gz")
DIM = 8
FILLER = ["the", "and", "a"]
# Words of the file that are not their own token: "The" folds onto "the" (after it: merged),
# "New_York" gives two tokens and "</s>" is the end-of-sentence marker (both dropped).
JUNK = ["</s>", "New_York"]


def write_topic_vectors(path, seed=0, extra=()):
    """A word2vec text file: one direction per topic (plus noise) for the bundled test words."""
    rng = np.random.default_rng(seed)
    words, rows = [], []
    for axis, topic in enumerate(sorted(fixtures.TOPICS)):
        for word in fixtures.TOPICS[topic]:
            words.append(word)
            rows.append(np.eye(DIM)[axis])
    words += FILLER + ["The", *JUNK, *extra]
    rows += [np.eye(DIM)[7]] * (len(words) - len(rows))
    vectors = np.asarray(rows, np.float32) + 0.05 * rng.normal(size=(len(rows), DIM)).astype(np.float32)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_vectors(path, words, vectors, "word2vec")
    return words


def _config(root, vectors):
    """Inputs whose stages finish in seconds; inputs.corpus matches nothing: it must not be read."""
    analogies, similarity, _ = tiny_eval_inputs(root)
    coverage = fixtures.write(str(root / "in" / "coverage.txt"), "The cat and the zebra!\n")
    config = {
        "inputs": {"corpus": [str(root / "no-corpus-*.txt")], "pretrained_vectors": vectors,
                   "pretrained_format": "word2vec", "pretrained_coverage_text": coverage,
                   "analogies": analogies, "similarity": [similarity], "digits": [DIGITS], "digits_eval": [],
                   "sentiment": [str(root / "in" / "polarity")]},
        "evaluate": {"probe_words": ["cat", "hammer"], "topn": 3, "pca_words": 20},
        "digits": {"layers": "1024-32-10", "epochs": 2},
        "sentiment": {"epochs": 2, "hidden": 8, "curve_sizes": "60,120", "compare_scratch": False},
        "gates": {"min_analogy_accuracy": 0.0, "min_digit_accuracy": 0.5, "min_sentiment_accuracy": 0.0,
                  "max_regression": None},
    }
    path = root / "import.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    root = tmp_path_factory.mktemp("import_chain")
    vectors = str(root / "in" / "vectors.txt")
    words = write_topic_vectors(vectors)
    config = _config(root, vectors)
    out = str(root / "out")
    return {"root": root, "config": config, "out": out, "vectors": vectors, "words": words,
            "first": chain_run.run(["--config", config, "--output-root", out])}


def _run_dir(out, name):
    return os.path.join(out, chain_run.RUNS_DIR, name)


def _read(*parts):
    with open(os.path.join(*parts), encoding="utf-8") as f:
        return f.read()


def test_import_replaces_corpus_and_train_and_the_report_names_the_file(chain):
    m, vectors = chain["first"], chain["vectors"]
    assert m["status"] == "promoted"
    downstream = ["evaluate", "digits"] + (["sentiment"] if chain_run._sentiment_available() else [])
    assert list(m["stages"]) == ["import", *downstream]
    assert {r["status"] for r in m["stages"].values()} == {"ran"}
    run_dir = _run_dir(chain["out"], m["run"])
    assert not os.path.exists(os.path.join(run_dir, "corpus"))
    assert "corpus" not in m["inputs"]  # its glob matches nothing: never read
    assert m["inputs"]["pretrained_vectors"]["files"][0]["size"] == os.path.getsize(vectors)
    assert m["promotion"]["skipped_stages"][:2] == ["corpus", "train"]

    embeddings = os.path.join(run_dir, "embeddings")
    info = json.loads(_read(embeddings, "info.json"))
    assert info["job"] == "import-vectors" and info["inputs"]["vectors"] == vectors
    evaluation = json.loads(_read(run_dir, "evaluation", "info.json"))
    assert evaluation["inputs"]["embeddings"] == embeddings  # evaluate read the imported vectors
    if "sentiment" in m["stages"]:  # the import is the tokenizer and the vectors
        sentiment = json.loads(_read(run_dir, "sentiment", "info.json"))
        assert sentiment["corpus"]["dir"] == sentiment["embeddings"]["dir"] == embeddings

    md = _read(run_dir, "report.md")
    lines = md.splitlines()
    assert lines[2].startswith("**Promoted")
    kept = len(chain["words"]) - len(JUNK) - 1  # "The" is merged into "the"
    assert lines[4] == (f"Vectors: imported from {vectors} (word2vec, {DIM} dimensions): {kept} words kept of "
                        f"{len(chain['words'])} read, 1 folded onto another token, {len(JUNK)} dropped; "
                        f"they cover 80.0% of the 5 tokens of {chain['root'] / 'in' / 'coverage.txt'}.")
    assert md.index("## Headline metrics") < md.index("## Vectors") < md.index("## Stages")
    assert "| format | word2vec |" in md and "| stage | import: ran |" in md
    assert "the vectors were imported, not trained" in md
    assert f"imported from {vectors}" in _read(run_dir, "report.html")


def test_an_unchanged_run_copies_the_import(chain):
    first = chain["first"]["run"]
    m = chain_run.run(["--config", chain["config"], "--output-root", chain["out"]])
    assert m["stages"]["import"]["status"] == "reused" and m["stages"]["import"]["from_run"] == first
    assert m["stages"]["import"]["fingerprint"] == chain["first"]["stages"]["import"]["fingerprint"]
    assert {r["status"] for r in m["stages"].values()} == {"reused"}
    embeddings = os.path.join(_run_dir(chain["out"], m["run"]), "embeddings")
    assert os.path.exists(os.path.join(embeddings, "COMPLETED")) and not os.path.islink(embeddings)
    assert f"| stage | import: reused from run {first} |" in _read(_run_dir(chain["out"], m["run"]), "report.md")


def test_a_bad_vectors_file_fails_before_any_stage_is_published(chain, capsys):
    bad = fixtures.write(str(chain["root"] / "in" / "bad.txt"), "3 2\nthe 1 2\ncat 1 x\ndog 3 4\n")
    out = chain["out"]
    before = _read(out, chain_run.LATEST_FILE)
    runs = set(os.listdir(os.path.join(out, chain_run.RUNS_DIR)))
    argv = ["--config", chain["config"], "--output-root", out, "--set", f"inputs.pretrained_vectors={bad}"]
    message = f"{bad}:3: value 2 is not a number: 'x'"
    with pytest.raises(ValueError, match="inputs.pretrained_vectors: .*" + re.escape(message)):
        chain_run.run(argv)
    assert cli.run_job("run", chain_run.run, argv) == 2
    assert message in capsys.readouterr().err
    failed = sorted(set(os.listdir(os.path.join(out, chain_run.RUNS_DIR))) - runs)
    assert len(failed) == 2  # digits was reusable, yet nothing was published: only the manifest
    for name in failed:
        assert os.listdir(_run_dir(out, name)) == ["manifest.json"]
        manifest = json.loads(_read(_run_dir(out, name), "manifest.json"))
        assert manifest["status"] == "failed" and message in manifest["error"]
    assert _read(out, chain_run.LATEST_FILE) == before


def test_a_changed_vectors_file_runs_the_import_again(chain):
    first = chain["first"]
    write_topic_vectors(chain["vectors"], seed=1, extra=["zebra"])
    m = chain_run.run(["--config", chain["config"], "--output-root", chain["out"],
                       "--set", "sentiment.enabled=false"])
    assert m["stages"]["import"]["status"] == "ran"
    assert m["stages"]["import"]["fingerprint"] != first["stages"]["import"]["fingerprint"]
    assert m["stages"]["evaluate"]["status"] == "ran"  # it reads the new vectors
    assert m["stages"]["digits"]["status"] == "reused"
    info = json.loads(_read(_run_dir(chain["out"], m["run"]), "embeddings", "info.json"))
    assert info["words"]["kept"] == first_kept(chain) + 1


def first_kept(chain):
    info = json.loads(_read(_run_dir(chain["out"], chain["first"]["run"]), "embeddings", "info.json"))
    return info["words"]["kept"]


# ------------------------------------------------------------------ before any work


def _sample_run(tmp_path, *assignments, extra=()):
    return chain_run.run(["--output-root", str(tmp_path / "out"), *extra,
                          *(a for s in assignments for a in ("--set", s))])


def test_import_config_errors_fail_before_any_work(tmp_path):
    vectors = str(tmp_path / "in" / "v.txt")
    write_topic_vectors(vectors)
    write_topic_vectors(str(tmp_path / "in" / "w.txt"))
    with pytest.raises(ValueError, match="config inputs.pretrained_format: set it to the format"):
        _sample_run(tmp_path, f"inputs.pretrained_vectors={vectors}")
    with pytest.raises(ValueError, match="inputs.pretrained_format must be one of"):
        _sample_run(tmp_path, f"inputs.pretrained_vectors={vectors}", "inputs.pretrained_format=text")
    with pytest.raises(FileNotFoundError, match="config inputs.pretrained_vectors: .*none.txt matches no file"):
        _sample_run(tmp_path, f"inputs.pretrained_vectors={tmp_path}/none.txt", "inputs.pretrained_format=glove")
    with pytest.raises(ValueError, match=r"config inputs.pretrained_vectors: .*\*.txt matches 2 files"):
        _sample_run(tmp_path, f"inputs.pretrained_vectors={tmp_path}/in/*.txt", "inputs.pretrained_format=glove")
    with pytest.raises(ValueError, match="--warm-start-from latest starts the train stage"):
        _sample_run(tmp_path, f"inputs.pretrained_vectors={vectors}", "inputs.pretrained_format=word2vec",
                    extra=["--warm-start-from", "latest"])
    with pytest.raises(ValueError, match="inputs.pretrained_format is set but inputs.pretrained_vectors is not"):
        _sample_run(tmp_path, "inputs.pretrained_format=glove")
    with pytest.raises(ValueError, match="--stages import: set inputs.pretrained_vectors"):
        _sample_run(tmp_path, extra=["--stages", "import"])
    with pytest.raises(ValueError, match="import.max_words must be an integer >= 1"):
        _sample_run(tmp_path, "import.max_words=0")
    assert not os.path.exists(tmp_path / "out" / chain_run.RUNS_DIR)


def test_the_train_step_is_the_import_when_vectors_are_imported():
    from embedflow import config as run_config  # pylint: disable=import-outside-toplevel

    config = run_config.load_config(None, ["inputs.pretrained_vectors=v.txt", "inputs.pretrained_format=glove",
                                           "import.max_words=500"])
    assert chain_run.select_steps(["corpus", "train", "report"], config) == ["corpus", "import", "report"]
    stages, skipped = chain_run.select_stages(config)
    assert stages[0] == "import" and "train" not in stages and "corpus" not in stages
    assert skipped[:2] == ["corpus", "train"]
    run_ = chain_run.Run("out", config, name="x")
    module, argv = run_.job_argv("import", "OUT")
    assert module == "jobs.import_vectors"
    assert argv == ["--vectors", "v.txt", "--format", "glove", "--output", "OUT", "--max-words", "500"]
    _, sentiment = run_.job_argv("sentiment", "S")
    embeddings = run_.stage_dir("import")
    assert sentiment[sentiment.index("--corpus") + 1] == sentiment[sentiment.index("--embeddings") + 1] == embeddings
    # Without an import nothing changes: train reads the corpus, sentiment both.
    plain = chain_run.Run("out", run_config.load_config(), name="x")
    _, sentiment = plain.job_argv("sentiment", "S")
    assert sentiment[sentiment.index("--corpus") + 1] == plain.stage_dir("corpus")


# ------------------------------------------------------------------ trained vectors


def test_the_report_names_the_training_model_defaulting_to_skipgram():
    old = {"job": "train", "parameters": {"dim": 16, "epochs": 3}, "vocab_size": 1200, "inputs": {"corpus": "c"}}
    line, (title, _, rows) = run_report.provenance(old, {"train": {"status": "ran"}})
    assert line == "Vectors: trained, skip-gram (no subwords), 16 dimensions, 3 epochs, 1,200 words."
    assert title == "Vectors" and ["subwords", "none"] in rows
    cbow = {**old, "model": {"family": "cbow", "subwords": {"min_n": 3, "max_n": 6, "buckets": 2000000}}}
    line, (_, _, rows) = run_report.provenance(cbow, {"train": {"status": "reused", "from_run": "r1"}})
    assert line.startswith("Vectors: trained, CBOW (subwords: character 3-6-grams in 2,000,000 buckets)")
    assert ["stage", "train: reused from run r1"] in rows
    assert run_report.provenance(None, {}) == (None, None)
