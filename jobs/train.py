"""Train job: skip-gram word vectors from a corpus job output.

    embedflow train --corpus DIR --output DIR [--dim 100] [--epochs 5] [--negatives 5]
        [--learning-rate 0.025] [--batch-size N] [--strategy auto|cpu|mirrored|multiworker|tpu]
        [--tpu ADDRESS] [--seed N]

The model, its draws and its two kernels are described in `trainer/skipgram.py`.

Output directory (published only when complete):
    vectors.npy, vocab.txt          rows of W and the vocabulary (word<TAB>count)
    vectors.word2vec.txt            word2vec text format (gensim load_word2vec_format)
    projector/vectors.tsv, projector/metadata.tsv   Embedding Projector
    saved_model/                    raw strings -> token vectors, mask, mean; the corpus
                                    job's transform_fn is inside, so it tokenizes alone
    logs/                           TensorBoard summaries (loss, learning rate, words/s)
    info.json, COMPLETED
Checkpoints live in OUTPUT.checkpoints/ (beside the output): a run started again with
the same command continues from the last one.
"""

import argparse
import dataclasses
import logging

import tensorflow as tf

from core import outputs
from core.main import main
from schemas import embeddings as schema
from trainer.skipgram import (DEFAULT_BATCH, KERNELS, STRATEGIES, TrainConfig, checkpoint_dir,
                              export, train)


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="embedflow train", description="Train skip-gram word vectors.")
    parser.add_argument("--corpus", required=True, metavar="DIR", help="corpus job output")
    parser.add_argument("--output", required=True, metavar="DIR")
    d = TrainConfig("", "")
    parser.add_argument("--dim", type=int, default=d.dim)
    parser.add_argument("--epochs", type=int, default=d.epochs)
    parser.add_argument("--negatives", type=int, default=d.negatives, help="noise words per pair (default 5)")
    parser.add_argument("--noise-per-centre", type=int, default=None,
                        help="noise words drawn per centre token, shared by its pairs (default 3 x --negatives)")
    parser.add_argument("--learning-rate", type=float, default=d.learning_rate)
    parser.add_argument("--batch-size", type=int, default=None,
                        help=f"centre tokens per step (default {DEFAULT_BATCH['fused']} with the fused kernel, "
                             f"{DEFAULT_BATCH['tf']} with the tf kernel)")
    parser.add_argument("--kernel", choices=KERNELS, default=d.kernel,
                        help="fused: a C++ op that trains pair by pair in place, on the CPU with one replica "
                             "(built on first use); tf: TensorFlow ops, on any device and strategy; "
                             "auto (default): fused where it applies and builds, else tf")
    parser.add_argument("--window", type=int, default=None, help="default: the corpus job's")
    parser.add_argument("--sample", type=float, default=None, help="default: the corpus job's")
    parser.add_argument("--strategy", choices=STRATEGIES, default=d.strategy)
    parser.add_argument("--tpu", default=None, help="TPU address (grpc://... or a TPU name)")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--checkpoint-every-steps", type=int, default=d.checkpoint_every_steps)
    parser.add_argument("--init-from", default=None, metavar="DIR",
                        help="embeddings output (embedflow train) whose vectors start the words "
                             "both vocabularies hold: warm start for a grown corpus")
    parser.add_argument("--max-steps", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    config = TrainConfig(**{k.replace("-", "_"): v for k, v in vars(args).items()})
    config.validate()
    return config


def run(argv=None):
    config = parse_args(argv)
    outputs.check_output_dir(config.output, inputs=[config.corpus, config.init_from])
    vectors, stats, corpus = train(config)
    ckpt_dir = checkpoint_dir(config.output)
    if not stats["chief"]:
        # Every worker trains the same replicated vectors; the chief alone exports.
        logging.info("train: worker done; the chief writes %s", config.output)
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
        params = dataclasses.asdict(config)
        params["window"] = config.window if config.window is not None else corpus.window
        params["sample"] = config.sample if config.sample is not None else corpus.sample
        out.publish({
            "job": "train",
            "inputs": {"corpus": config.corpus, "corpus_fingerprint": corpus.info["inputs"]["fingerprint"],
                       "corpus_completed_at": corpus.info.get("completed_at")},
            "parameters": params,
            "vocab_size": len(vectors),
            "training": dict(stats),
        })
    # The run is complete: checkpoints are no longer needed to resume.
    outputs.delete_tree(ckpt_dir)
    logging.info("train: wrote %s (%.0f words/s)", config.output, stats["words_per_second"])
    return config.output


if __name__ == "__main__":
    main("train", run)
