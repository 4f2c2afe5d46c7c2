"""Names inside an `embedflow run` output root (the layout is documented in embedflow/run.py)."""

RUNS_DIR = "runs"  # ROOT/runs/<UTC time>-<id>/: one run
LATEST_FILE = "latest"  # ROOT/latest: the name of the promoted run, one line
MANIFEST_FILE = "manifest.json"  # a run's lineage, written last
STAGE_RECORD_SUFFIX = ".stage.json"  # <stage>.stage.json: fingerprint, ran or reused

# The stages in order, and the directory each one's job output takes in a run.
STAGES = ("corpus", "train", "evaluate", "digits", "sentiment")
STEPS = STAGES + ("report", "promote")
STAGE_DIRS = {"corpus": "corpus", "train": "embeddings", "evaluate": "evaluation",
              "digits": "digits", "sentiment": "sentiment"}
