"""Names inside an `embedflow run` output root (the layout is documented in embedflow/run.py)."""

RUNS_DIR = "runs"  # ROOT/runs/<UTC time>-<id>/: one run
LATEST_FILE = "latest"  # ROOT/latest: the name of the promoted run, one line
MANIFEST_FILE = "manifest.json"  # a run's lineage, written last
STAGE_RECORD_SUFFIX = ".stage.json"  # <stage>.stage.json: fingerprint, ran or reused

# The stages in order, and the directory each one's job output takes in a run.
STAGES = ("corpus", "train", "evaluate", "digits", "sentiment")
STEPS = STAGES + ("report", "promote")
# With `inputs.pretrained_vectors` set, this stage (`embedflow import-vectors`) replaces
# corpus and train: its output is the run's embeddings and its tokenizer, so it takes
# the train stage's directory, and selecting the `train` step selects it.
IMPORT_STAGE = "import"
STAGE_DIRS = {"corpus": "corpus", "train": "embeddings", IMPORT_STAGE: "embeddings",
              "evaluate": "evaluation", "digits": "digits", "sentiment": "sentiment"}
