"""Names of the import-vectors job's output (the contract is documented in `jobs/import_vectors.py`).

An import output is at once a corpus-like output (schemas/corpus.py: transform_fn/,
transformed_metadata/, vocab.tsv; no windows) and an embeddings output
(schemas/embeddings.py: vectors.npy, vocab.txt, vectors.word2vec.txt, projector/,
saved_model/), so it declares only what is its own.
"""

JOB = "import-vectors"  # info.json "job"

# Inside the staging directory while the job runs, removed before it publishes: the
# kept words, one a line, that the tf.Transform analysis pass reads.
TEMP_DIR = "tmp"
WORDS_FILE = "words.txt"

# The command that writes this output, for messages of the jobs that read it.
PRODUCER = "embedflow import-vectors --vectors FILE --format FORMAT --output DIR"
