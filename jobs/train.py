"""Train job: word vectors (skip-gram or CBOW, optionally with fastText subwords) from a
corpus job output.

    embedflow train --corpus DIR --output DIR [--model skipgram|cbow] [--subwords
        [--min-n 3] [--max-n 6] [--buckets 2000000]] [--dim 100] [--epochs 5] [--negatives 5]
        [--learning-rate 0.025|0.05] [--batch-size N] [--kernel auto|fused|tf]
        [--strategy auto|cpu|mirrored|multiworker|tpu] [--tpu ADDRESS] [--seed N]
        [--sync-every-words N] [--worker-rate-scale 1.2] [--update-tokens N] [--init-from DIR] [...]
                                       (`embedflow train --help` lists every flag)
    python -m jobs.train ...           (the same)

The models, their draws and the two kernels are described in `trainer/skipgram.py`
(--model cbow and --subwords: the fused CPU kernel only); what replicas exchange, in
`trainer/exchange.py`.

Output directory (published only when complete):
    vectors.npy, vocab.txt          the word vectors (rows of W; with --subwords each word's
                                    composed vector, the mean of its own row and its n-gram
                                    rows, as fastText exports them) and the vocabulary
                                    (word<TAB>count); every export below holds these vectors
    subword_vectors.npy, subwords.json   with --subwords only: the n-gram bucket rows
                                    (float32 [buckets, dim]: 800 MB at 2M buckets x dim 100)
                                    and {"min_n", "max_n", "buckets"}; WordVectors.load reads
                                    them and gives words outside the vocabulary a vector
    vectors.word2vec.txt            word2vec text format (gensim load_word2vec_format)
    vectors.word2vec.bin            word2vec binary format (load_word2vec_format(binary=True))
    projector/vectors.tsv, projector/metadata.tsv   Embedding Projector
    saved_model/                    raw strings -> token vectors, mask, mean; the corpus
                                    job's transform_fn is inside, so it tokenizes alone; with
                                    --subwords it holds the n-gram rows too and gives any
                                    token a vector, its n-grams hashed in the graph
    logs/                           TensorBoard summaries (loss, learning rate, words/s)
    info.json, COMPLETED            info.json's "model": {"family": "skipgram" | "cbow",
                                    "subwords": null | {"min_n", "max_n", "buckets"}};
                                    its "training": steps, words, words/s, the
                                    loss curve, kernel, strategy, replicas, the
                                    learning rate it started at, and what the
                                    replicas exchanged: bytes_exchanged (payload bytes, all
                                    replicas) and bytes_exchanged_per_word; with several
                                    fused workers exchanges, hot_exchanges and
                                    exchange_seconds; with several replicas in one process
                                    replica_max_difference (0: identical copies);
                                    tables_sha256 (a non-chief worker logs its own);
                                    "pairs" counts centres with --model cbow
Several workers (--strategy multiworker): each trains; the chief alone writes the output.
Checkpoints live in OUTPUT.checkpoints/ (beside the output), with fingerprint.json: the
corpus (its inputs fingerprint and vocabulary) and the parameters that shape the vectors
(the model and its subword rule included).
A run started again with the same corpus and parameters continues from the last
checkpoint; one with another corpus or other parameters is refused (delete
OUTPUT.checkpoints to start afresh).

Failures publish nothing and leave no COMPLETED: a loss or vectors that stop being
finite (training diverged: lower --learning-rate), a window shard that is not what the
corpus job wrote (re-run the corpus job), checkpoints of another run.
"""

import logging

import tensorflow as tf

from core import outputs
from core.main import main
from core.params import new_parser, parse_all
from schemas import embeddings as schema
from trainer.skipgram import TrainConfig, checkpoint_dir, export, train

PARAMS = TrainConfig


def parse_args(argv):
    """The checked TrainConfig of a command line; fails before work on a bad flag or --output."""
    parser = TrainConfig.add_flags(new_parser("embedflow train", "Train word vectors (skip-gram or CBOW, optionally with subwords)."))
    config = parse_all(TrainConfig, parser, argv)
    outputs.check_output_path(config.output)
    outputs.check_not_an_input(config.output, "--output", [config.corpus, config.init_from])
    return config


def run(argv=None):
    """Runs the train job; returns the output directory (see the module docstring)."""
    config = parse_args(argv)
    outputs.check_output_dir(config.output, inputs=[config.corpus, config.init_from])
    vectors, stats, corpus = train(config)
    ckpt_dir = checkpoint_dir(config.output)
    if not stats["chief"]:
        # Every worker ends with the same tables (their hash is in the chief's info.json); the
        # chief alone exports.
        logging.info("train: worker done (tables sha256 %s); the chief writes %s", stats["tables_sha256"],
                     config.output)
        return config.output
    with outputs.StagedOutput(config.output, inputs=[config.corpus, config.init_from]) as out:
        export(vectors, config.corpus, out.path)
        logs = outputs.join(ckpt_dir, schema.LOGS_DIR)
        if tf.io.gfile.exists(logs):
            tf.io.gfile.makedirs(outputs.join(out.path, schema.LOGS_DIR))
            for name in tf.io.gfile.listdir(logs):
                if not tf.io.gfile.isdir(outputs.join(logs, name)):
                    tf.io.gfile.copy(outputs.join(logs, name),
                                     outputs.join(out.path, schema.LOGS_DIR, name), overwrite=True)
        params = config.as_dict()
        params["window"] = config.window if config.window is not None else corpus.window
        params["sample"] = config.sample if config.sample is not None else corpus.sample
        out.publish({
            "job": "train",
            "inputs": {"corpus": config.corpus, "corpus_fingerprint": corpus.info["inputs"]["fingerprint"],
                       "corpus_completed_at": corpus.info.get("completed_at")},
            "parameters": params,
            "model": config.describe_model(),
            "vocab_size": len(vectors),
            "training": dict(stats),
        })
    # The run is complete: checkpoints are no longer needed to resume.
    outputs.delete_tree(ckpt_dir)
    logging.info("train: wrote %s (%.0f words/s)", config.output, stats["words_per_second"])
    return config.output


if __name__ == "__main__":
    main("train", run)
