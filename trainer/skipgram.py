"""Word2vec's and fastText's models with negative sampling under tf.distribute: data,
models, loop, exports.

The job that runs it (flags, the output contract) is `jobs/train.py`.

Input: a corpus job output directory (refused without COMPLETED). Its window records
are runs of token ids; for every epoch this trainer draws, in `tf.data`:
  * frequent-word subsampling with word2vec's formula: a token of corpus frequency f
    is kept with probability (sqrt(f / (s T)) + 1) (s T) / f, s = --sample, T = the
    number of in-vocabulary tokens;
  * a dynamic window: every centre draws its radius uniformly from 1..window, so a
    context at distance d is used with probability (window - d + 1) / window;
  * negatives from the unigram distribution of the stored counts raised to 0.75.
Draws use stateless random ops seeded from (--seed, epoch, batch index), so a resumed
run draws what the first would have drawn.

Models (--model, --subwords): input vectors W (uniform in +-0.5/dim, as word2vec) and
output vectors C (zeros), one row a word. Each step takes a batch of --batch-size
consecutive kept tokens (whole runs, in order); every token is a centre, its contexts
those its radius reaches in the same run.

  * skipgram (default): each context's input vector predicts the centre's output vector
    against --negatives noise words.
  * cbow: the mean of the centre's contexts' input vectors predicts the centre's output
    vector (word2vec's cbow_mean=1), against --negatives noise words drawn for the
    centre; the mean's gradient is added whole to every context row, as word2vec does.
    Its default --learning-rate is word2vec's for CBOW, 0.05 (skip-gram: 0.025).
  * --subwords (either model; fastText's): W also holds --buckets rows after the words'.
    A word's input vector is the mean of its own row and the rows of its character
    n-grams of --min-n to --max-n characters, `<` and `>` marking its ends, each hashed
    with fastText's FNV-1a into a bucket (trainer/subwords.py). The exports hold every
    word's composed vector (that mean), as fastText's, and the bucket rows, so a word
    outside the vocabulary gets the mean of its n-gram rows: in `WordVectors` and in the
    SavedModel, which hashes the n-grams of raw text in its graph as training did.

The learning rate decays linearly with the corpus words processed, from
--learning-rate to 1e-4 of it, as word2vec does. Two kernels (--kernel):

  * fused (default on the CPU with one replica per process; trainer/kernels): C++ ops
    that train in place, every model: skip-gram's update is word2vec's with the noise
    words drawn once per centre and shared by its contexts, the centre's pairs updated
    together (HogBatch); CBOW and the subword models are word2vec's and fastText's
    updates. The batch is split over TensorFlow's intra-op threads without locks
    (Hogwild). With several workers (MultiWorkerMirroredStrategy, 2 at most) each trains
    its own tables on its share of the shards, at --worker-rate-scale times the learning
    rate, and the workers add up their changes every
    --sync-every-words words (`SyncedEpochLoop`, trainer/exchange.py): skip-gram and
    CBOW, whose tables are [V, d] both; not --subwords, refused before any work, as
    that exchange would send every one of the --buckets n-gram rows each round.
  * tf (GPUs, TPUs, several replicas in a process): skip-gram without subwords only;
    --model cbow or --subwords there (--kernel tf, --strategy tpu, a strategy of
    several local replicas or a GPU) is refused before any work: the accelerator path
    is skip-gram only for now. TensorFlow ops compiled with XLA.
    Contexts come from shifting the batch (no extra lookup); a centre's
    --noise-per-centre noise words stand for the K noise words of each of its pairs
    (their terms weighted by its number of contexts: the expected gradient of
    word2vec's per-pair sampling). A step's batch (padded to static shapes) is applied
    as sequential updates of --update-tokens centres over all replicas: the gradients
    of an update, in closed form, are summed per row and applied as sparse scatters,
    each row moved by min(lr, --newton-cap / H) times its sum, H the curvature of its
    terms (`apply_factors`). That cap is what keeps large updates stable (a plain sum
    diverges on Wikipedia from 4,096 tokens on); smaller updates learn more per word
    (one epoch on 5M words of Wikipedia: analogy 3.7% with 1,024-token updates, 3.3%
    with 4,096, 2.0% with 16,384, 1.1% with 65,536; fused kernel 3.8%), so steps are
    large (what an accelerator and the input pipeline want) and updates small. With
    several replicas every replica applies every replica's part of each update, whose
    factors they all-gather (trainer/exchange.py), never a dense table.

Safety, each a ValueError that says what to do: the window shards are checked against
the sizes the corpus job recorded before any work, and a damaged record met while
training names its shard; checkpoints are resumed only by the run they belong to
(`run_fingerprint`: the corpus, the model and its subword rule, the parameters); a loss that is not finite (after every call of the step loop) or
vectors that are not (before every checkpoint and before the vectors are returned for
export) stop a diverging run.
"""

import argparse
import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import re
import time

import numpy as np
import pydantic
import tensorflow as tf
from apache_beam.io.filesystems import FileSystems

from core import main, outputs, tokens
from core.params import Params, param
from schemas import corpus as corpus_schema
from schemas import embeddings as schema
from trainer import exchange, formats
from trainer.subwords import SubwordSpec, ngram_buckets_tf, ngram_table

STRATEGIES = ("auto", "cpu", "mirrored", "multiworker", "tpu")
KERNELS = ("auto", "fused", "tf")
MODELS = ("skipgram", "cbow")
DEFAULT_LEARNING_RATE = {"skipgram": 0.025, "cbow": 0.05}  # word2vec's -alpha, by -cbow
DEFAULT_BATCH = {"fused": 65536, "tf": 65536}  # centre tokens per step, by kernel
DEFAULT_UPDATE_TOKENS = 1024  # tf kernel: tokens of one sequential update, over all replicas
# tf kernel: see TrainConfig.newton_cap and apply_factors. Measured on 4.8M words of
# enwiki-AA, 5 epochs, 65,536-token steps of 1,024-token updates, 15 noise words a centre:
# analogy 17.0% with 4 (seed 1), 16.4% +- 0.8 with 1 and 17.1% +- 0.9 with 0.5 (seeds 1-3),
# 18.1% with 0.25 (seed 1); WordSim-353 0.561 with 1 and 0.552 with 0.5 (seeds 1-3), 0.525
# with 0.25 (seed 1); the fused kernel: 19.3% +- 0.4, 0.573 +- 0.007. 30 noise words a
# centre (noise_count) moved it more than the cap.
DEFAULT_NEWTON_CAP = 0.5
NOISE_PER_NEGATIVE = 6  # tf kernel: noise words drawn per centre, per --negatives (noise_count)
DEFAULT_SYNC_EVERY_WORDS = 1_600_000  # fused kernel, several workers: see trainer/exchange.py
# Fused kernel, several workers: their learning rate over --learning-rate. Each worker
# trains between exchanges without the others' changes, so the summed changes learn less
# a word than one process does. On 4.8M words of enwiki-AA, 5 epochs, dim 100 (seeds 4-8):
# 2 workers at 0.025 scored analogy 18.4%, one process 18.1% at 0.021 and 19.2% at 0.025;
# the workers at 0.03 (1.2 x) 19.1% over seeds 1-8 against the one process's 19.3%.
DEFAULT_WORKER_RATE_SCALE = 1.2
_MIN_LR_RATIO = 1e-4
_LOSS_EVERY = 8  # the fused kernel measures the loss on one step in this many (at most)
_CURVE_POINTS = 40  # the loss curve gets a point every 1/40 of the training, at least
_LOG_EVERY_SECONDS = 10.0
_RECORDS_PER_READ = 64  # window records read (and drawn for) together; shapes the draws
# The fused kernel keeps a corpus whose token ids take up to this much memory parsed in
# memory across epochs (InMemoryCorpus: about 4.2 bytes a token, some 500M tokens):
# reading and parsing the window files, and drawing the subsampling and radii in
# tf.data, cost it about a third of its time every epoch.
_CACHE_BYTES = 2 << 30


class TrainConfig(Params):
    """Parameters of one training run (defaults follow word2vec's); `embedflow train`'s flags
    and the `train` section of a run config."""

    corpus: str = param(metavar="DIR", config=False, help="corpus job output")
    output: str = param(metavar="DIR", config=False, help="output directory")
    dim: int = param(100, ge=1, help="dimensions of a word vector")
    epochs: int = param(5, ge=1, help="passes over the corpus")
    negatives: int = param(5, ge=1, help="noise words per pair")  # as word2vec's -negative
    noise_per_centre: int | None = param(
        None, ge=1, help="noise words drawn per centre token with the tf kernel, shared by its "
                         "pairs; unset: 6 x --negatives (as many as word2vec draws for a centre's "
                         "pairs at window 5, which average 6)")
    model: str = param("skipgram", choices=MODELS,
                       help="skipgram: each context word predicts its centre; cbow: the mean of the "
                            "context words predicts the centre (word2vec's cbow_mean=1); both with "
                            "negative sampling")
    subwords: bool = param(False, help="fastText's subword vectors: a word's input vector is the mean "
                                       "of its own row and the rows of its character n-grams (hashed "
                                       "into --buckets rows), so any word, seen or not, gets a vector; "
                                       "fused kernel only")
    min_n: int = param(3, ge=1, help="with --subwords: shortest character n-gram (fastText's -minn)")
    max_n: int = param(6, ge=1, help="with --subwords: longest character n-gram (fastText's -maxn)")
    buckets: int = param(2_000_000, ge=1, help="with --subwords: rows the n-grams are hashed into "
                                                "(fastText's -bucket); each holds --dim floats")
    learning_rate: float | None = param(
        None, gt=0, help=f"starting learning rate, decayed linearly; unset: "
                         f"{DEFAULT_LEARNING_RATE['skipgram']} with --model skipgram, "
                         f"{DEFAULT_LEARNING_RATE['cbow']} with cbow (word2vec's)")
    # Over all replicas. The batch only sets the overhead of a step (and what the input
    # pipeline and an accelerator take at once): the fused kernel applies every pair's update
    # at once, the tf kernel applies its batch as updates of --update-tokens.
    batch_size: int | None = param(
        None, ge=1, help=f"centre tokens per step; unset: {DEFAULT_BATCH['fused']} with the fused "
                         f"kernel, {DEFAULT_BATCH['tf']} with the tf kernel")
    kernel: str = param("auto", choices=KERNELS,
                        help="fused: a C++ op that trains each batch in place, a centre's noise words "
                             "shared by its pairs (HogBatch), on the CPU with one replica per process "
                             "(built on first use), every --model and --subwords; tf: TensorFlow ops "
                             "compiled with XLA, on any device and strategy, skip-gram without "
                             "--subwords only; auto: fused where it applies and builds, else tf")
    window: int | None = param(None, ge=1, help="skip-gram window radius; unset: the corpus job's")
    sample: float | None = param(None, ge=0, lt=1,
                                 help="frequent-word subsampling threshold; unset: the corpus job's")
    update_tokens: int = param(
        DEFAULT_UPDATE_TOKENS, ge=1,
        help="tf kernel: centre tokens, over all replicas, of one update; a step applies its batch "
             "as batch / this updates one after another (fewer, larger updates learn less a word)")
    newton_cap: float = param(
        DEFAULT_NEWTON_CAP, gt=0,
        help="tf kernel: a row moves at most this many times the Newton step of its share of a "
             "step's loss, so that large batches stay stable")
    strategy: str = param("auto", choices=STRATEGIES, help="tf.distribute strategy")
    sync_every_words: int = param(
        DEFAULT_SYNC_EVERY_WORDS, ge=1,
        help="fused kernel on several workers: corpus words each worker trains between two "
             "exchanges of the tables")
    worker_rate_scale: float = param(
        DEFAULT_WORKER_RATE_SCALE, gt=0,
        help="fused kernel on several workers: their learning rate is this many times "
             "--learning-rate, as workers that add up changes made apart learn less a word "
             "than one process (measured with 2 workers; 1 keeps --learning-rate)")
    tpu: str | None = param(None, help="TPU address (grpc://... or a TPU name)")
    seed: int = param(1, help="seed of the initial vectors and of every draw")
    checkpoint_every_steps: int = param(2000, ge=1, help="steps between checkpoints")
    init_from: str | None = param(None, metavar="DIR", config=False,
                                  help="embeddings output (embedflow train) whose vectors start the "
                                       "words both vocabularies hold: warm start for a grown corpus")
    # Stop early (tests, profiling): a flag, but neither in --help nor in a run config.
    max_steps: int | None = param(None, ge=1, help=argparse.SUPPRESS, config=False)

    @pydantic.model_validator(mode="after")
    def _tpu_needs_an_address(self):
        if self.strategy == "tpu" and not self.tpu:
            raise ValueError("--strategy tpu needs --tpu ADDRESS")
        return self

    @pydantic.model_validator(mode="after")
    def _model_fits_the_kernel(self):
        if self.learning_rate is None:
            self.learning_rate = DEFAULT_LEARNING_RATE[self.model]
        if self.subwords:
            SubwordSpec(self.min_n, self.max_n, self.buckets).check()
        forced = ("--kernel tf" if self.kernel == "tf" else
                  "--strategy tpu" if self.strategy == "tpu" else None)
        if forced and self.needs_fused():
            raise fused_only_error(self, forced)
        if self.subwords and self.strategy == "multiworker":
            raise ValueError(
                "--subwords is not trained with --strategy multiworker yet: the workers' exchange "
                "(trainer/exchange.py) sends every row of the input table each round, and with "
                f"subwords that table holds --buckets ({self.buckets:,}) n-gram rows besides the "
                "words. Train --subwords in one process (--strategy auto or cpu; more threads: "
                "TF_NUM_INTRAOP_THREADS), or drop --subwords")
        return self

    def needs_fused(self):
        """The flags of this model that only the fused kernel trains, as text ('' for none)."""
        return " and ".join(f for f, on in (("--model cbow", self.model == "cbow"),
                                            ("--subwords", self.subwords)) if on)

    def subword_spec(self):
        """The n-gram rule of --subwords, or None without it."""
        return SubwordSpec(self.min_n, self.max_n, self.buckets) if self.subwords else None

    def describe_model(self):
        """The model, as info.json records it (top-level key "model")."""
        spec = self.subword_spec()
        return {"family": self.model, "subwords": None if spec is None else spec.as_dict()}

    def effective(self, corpus, kernel):
        """The values this run trains with: window, sample and batch size resolved."""
        return {"window": self.window if self.window is not None else corpus.window,
                "sample": self.sample if self.sample is not None else corpus.sample,
                "batch_size": self.batch_size if self.batch_size is not None else DEFAULT_BATCH[kernel]}


def too_many_workers_error(workers):
    """The error for more fused-kernel workers than exchange.MAX_FUSED_WORKERS."""
    return ValueError(
        f"--strategy multiworker with the fused kernel trains on at most {exchange.MAX_FUSED_WORKERS} "
        f"workers, and TF_CONFIG names {workers}: with more, the workers' summed changes of the "
        "most frequent words overshoot and training diverges or learns nothing (measured with 4 "
        "workers at learning rates 0.005 to 0.03, trainer/exchange.py). Train on "
        f"{exchange.MAX_FUSED_WORKERS} workers, or in one process with more threads "
        "(TF_NUM_INTRAOP_THREADS; it scales with the cores), or pass --kernel tf, whose replicas "
        "stay identical by design (tested with 2) but train far slower on CPUs")


def fused_only_error(config, forced):
    """The error for a model that the tf kernel does not train, which `forced` selects."""
    return ValueError(
        f"{config.needs_fused()} train only with the fused CPU kernel, but {forced} trains with the "
        "tf kernel: the accelerator path (GPUs, TPUs, several replicas in one process) is skip-gram "
        "without subwords for now. Train on the CPU with --kernel auto or fused and --strategy cpu "
        "(or multiworker on CPU workers), or train --model skipgram without --subwords there.")


# ------------------------------------------------------------------------ corpus


@dataclasses.dataclass
class Corpus:
    """What the trainer reads from a corpus job's output."""

    directory: str
    vocab: list
    counts: np.ndarray
    window_files: list
    window: int
    sample: float
    info: dict

    @property
    def total_words(self):
        return int(self.counts.sum())


def read_vocab(directory):
    """The vocab.tsv of a corpus output at `directory` (line i is id i).

    Returns:
      (tokens: list of str, counts: int64 [vocabulary size]).
    """
    rows = [line.split("\t") for line in outputs.read_text(
        outputs.join(directory, corpus_schema.VOCAB_FILE)).splitlines()]
    return [r[0] for r in rows], np.array([int(r[1]) for r in rows], dtype=np.int64)


def load_corpus(directory):
    """The corpus job output at `directory`, its window shards checked against its info.json."""
    info = outputs.require_completed(directory, "--corpus", corpus_schema.PRODUCER)
    if info.get("job") != "corpus":
        raise ValueError(f"--corpus {directory} is the output of `{info.get('job')}`, not of the corpus job")
    vocab, counts = read_vocab(directory)
    pattern = outputs.join(directory, corpus_schema.WINDOWS_DIR, "*")
    sizes = {m.path: m.size_in_bytes for m in FileSystems.match([pattern])[0].metadata_list}
    if not sizes:
        raise FileNotFoundError(f"--corpus {directory} holds no window files")
    check_window_shards(directory, sizes, info.get("windows", {}).get("shard_bytes"))
    return Corpus(directory, vocab, counts, sorted(sizes), info["parameters"]["window"],
                  info["parameters"]["sample"], info)


def damaged_corpus(directory, what):
    """The error for window shards that are not what the corpus job wrote."""
    return ValueError(f"--corpus {directory}: {what}. Re-run the corpus job "
                      f"(`{corpus_schema.PRODUCER}`) into it to write it again.")


def check_window_shards(directory, sizes, expected):
    """Raises unless the shards are those, of the sizes, that the corpus job recorded.

    A shard cut short inside a record's header reads as a shorter shard without any
    error (TFRecordDataset takes it for the end of the file), so the sizes are compared
    before any work. Outputs of corpus jobs that recorded no sizes are not checked here.

    Args:
      sizes: {path: bytes} of the window files found.
      expected: info.json's windows.shard_bytes, {file name: bytes}, or None.
    """
    if expected is None:
        return
    found = {path.rsplit("/", 1)[-1]: (path, size) for path, size in sizes.items()}
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if missing or extra:
        raise damaged_corpus(directory, f"its window shards are not those the corpus job wrote "
                                        f"(missing: {', '.join(missing) or 'none'}; not written by it: "
                                        f"{', '.join(extra) or 'none'})")
    for name, size in sorted(expected.items()):
        path, actual = found[name]
        if actual != size:
            raise damaged_corpus(directory, f"the window shard {path} holds {actual} bytes, but the "
                                            f"corpus job wrote {size}: it is truncated or was changed")


def damaged_shard_error(corpus, error):
    """The shard behind a DataLossError met while training, as a ValueError naming it.

    Reads every shard again (only on this error path) to find the first that fails.
    Returns `error` itself when every shard reads back whole.
    """
    for path in corpus.window_files:
        try:
            tf.data.TFRecordDataset(path).reduce(np.int64(0), lambda n, _: n + 1)
        except tf.errors.DataLossError as found:
            why = re.search(r"(truncated|corrupted) record at \d+", found.message)
            return damaged_corpus(corpus.directory, f"the window shard {path} is damaged "
                                                    f"({why.group(0) if why else found.message.strip()})")
    return error


def keep_probabilities(counts, sample):
    """word2vec's subsampling: probability of keeping each token, by id."""
    if sample <= 0:
        return np.ones(len(counts), dtype=np.float32)
    threshold = sample * counts.sum()
    keep = (np.sqrt(counts / threshold) + 1) * threshold / counts
    return np.minimum(keep, 1.0).astype(np.float32)


def noise_cdf(counts, power=0.75):
    """Cumulative unigram^power distribution, for inverse-CDF negative sampling."""
    weights = counts.astype(np.float64) ** power
    cdf = np.cumsum(weights / weights.sum())
    cdf[-1] = 1.0
    return cdf.astype(np.float32)


# ----------------------------------------------------------------------- dataset


def noise_count(config):
    """Noise words drawn per centre token (tf kernel): by default as many as word2vec draws
    for a centre's pairs at window 5 (dynamic radii make W + 1 = 6 pairs on average).

    Measured on 4.8M words of enwiki-AA, 5 epochs, 65,536-token steps of 1,024-token updates,
    cap 0.5, seeds 1-3: 6 x --negatives scored analogy 18.5% +- 0.5 and WordSim-353 0.559
    +- 0.003 at 65-75k words/s; 3 x, 17.1% +- 0.9 and 0.552 at 107-118k words/s (the fused
    kernel: 19.3% +- 0.4, 0.573 +- 0.007).
    """
    return config.noise_per_centre if config.noise_per_centre is not None else NOISE_PER_NEGATIVE * config.negatives


def offsets(window):
    """Context offsets of a window of radius `window`: -window..-1, 1..window."""
    return [o for o in range(-window, window + 1) if o]


def shift(x, offset, fill=0):
    """y[i] = x[i + offset] along axis 0, `fill` where i + offset is out of range."""
    if offset > 0:
        return tf.concat([x[offset:], tf.fill(tf.shape(x[:offset]), tf.cast(fill, x.dtype))], 0)
    return tf.concat([tf.fill(tf.shape(x[:-offset]), tf.cast(fill, x.dtype)), x[:offset]], 0)


def context_masks(rows, radius, window):
    """Which (centre, centre + offset) pairs are skip-gram pairs.

    Args:
      rows: int64 [N], the run each token belongs to (pairs never cross runs; -1 pads).
      radius: int32 [N], the dynamic window radius drawn for each centre.
      window: maximum radius.

    Returns:
      list of bool [N], one per offset in `offsets(window)`.
    """
    masks = []
    for o in offsets(window):
        same_run = tf.equal(shift(rows, o, fill=-1), rows) & (rows >= 0)
        masks.append(same_run & (abs(o) <= radius))
    return masks


def _read_seed(config, epoch):
    return np.int64(config.seed) * 1_000_003 + epoch * 7919


def corpus_reads(corpus, config, epoch, input_context=None):
    """The window records of this input pipeline's shards, `_RECORDS_PER_READ` at a time,
    parsed: dicts of "ids" int32 [n] and "records" int32 [n] (each token's record in its
    read), in the order of `epoch` (its file order and record shuffle)."""
    base = _read_seed(config, epoch)
    files = tf.data.Dataset.from_tensor_slices(corpus.window_files)
    if input_context is not None and input_context.num_input_pipelines > 1:
        files = files.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    files = files.shuffle(len(corpus.window_files), seed=int(base % (2**31)), reshuffle_each_iteration=False)
    records = files.interleave(tf.data.TFRecordDataset, cycle_length=4, block_length=16,
                               num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    records = records.shuffle(4096, seed=int((base + 1) % (2**31)), reshuffle_each_iteration=False)

    def parse(serialized):
        sparse = tf.io.parse_example(serialized, corpus_schema.WINDOWS_FEATURE_SPEC)[corpus_schema.TOKEN_IDS_KEY]
        return {"ids": tf.cast(sparse.values, tf.int32), "records": tf.cast(sparse.indices[:, 0], tf.int32)}

    return records.batch(_RECORDS_PER_READ).map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


class InMemoryCorpus:
    """An input pipeline's share of the corpus, parsed once and kept in memory, for the
    fused kernel.

    Two tensors: the token ids, record after record (int32), and where each record
    starts (int64). Every epoch trains the records in its own random order, cut into
    batches of `batch_records`; the step draws each batch's subsampling and window radii
    in C++ (kernels.draw_batch), so no tf.data pipeline runs per epoch. Parsed on first
    use (`load`).
    """

    def __init__(self, corpus, config, batch_size, pipeline=(0, 1)):
        # pipeline: (this input pipeline's index, number of input pipelines), e.g. workers
        self.corpus, self.config, self.pipeline = corpus, config, pipeline
        window = config.window if config.window is not None else corpus.window
        sample = config.sample if config.sample is not None else corpus.sample
        self.window, self.keep = int(window), keep_probabilities(corpus.counts, sample)
        self.batch_size = batch_size  # kept tokens a batch, on average
        self.tokens = self.starts = self.keep_t = None
        self.batch_records = 1

    @staticmethod
    def fits(corpus):
        """Whether the corpus's parsed ids fit the memory budget (_CACHE_BYTES)."""
        records = corpus.info.get("counts", {}).get("window_records") or corpus.total_words
        return corpus.total_words * 4 + records * 8 <= _CACHE_BYTES

    def load(self):
        """Reads and parses this pipeline's window files (once), logging its progress."""
        if self.tokens is not None:
            return
        index, pipelines = self.pipeline
        files = tf.data.Dataset.from_tensor_slices(self.corpus.window_files).shard(pipelines, index)

        def parse(serialized):
            sparse = tf.io.parse_example(serialized, corpus_schema.WINDOWS_FEATURE_SPEC)[corpus_schema.TOKEN_IDS_KEY]
            n = tf.size(serialized)
            lengths = tf.math.bincount(tf.cast(sparse.indices[:, 0], tf.int32), minlength=n, maxlength=n,
                                       dtype=tf.int64)
            return tf.cast(sparse.values, tf.int32), lengths

        records = (files.interleave(tf.data.TFRecordDataset, cycle_length=1)
                   .batch(1024).map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(2))
        ids, lengths, started, last = [], [], time.time(), time.time()
        for values, counts in records:
            ids.append(values.numpy())
            lengths.append(counts.numpy())
            if time.time() - last >= _LOG_EVERY_SECONDS:
                last, done = time.time(), sum(len(i) for i in ids)
                logging.info("train: reading the corpus into memory: %d tokens (%.0f tokens/s)",
                             done, done / (last - started))
        tokens = np.concatenate(ids) if ids else np.zeros([0], np.int32)
        lengths = np.concatenate(lengths) if lengths else np.zeros([0], np.int64)
        if not len(lengths):
            raise ValueError(f"{self.corpus.directory}: input pipeline {index} of {pipelines} got no window "
                             f"records; use fewer workers than the corpus has window files")
        self.tokens, self.keep_t = tf.constant(tokens), tf.constant(self.keep)
        self.starts = tf.constant(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
        kept = float((self.corpus.counts * self.keep).sum()) / max(float(self.corpus.counts.sum()), 1.0)
        self.batch_records = max(1, round(self.batch_size * len(lengths) / max(kept * len(tokens), 1.0)))
        logging.info("train: the corpus is in memory: %d tokens in %d records (%.0f MB), parsed in %.1f s; "
                     "%d records a step", len(tokens), len(lengths), (tokens.nbytes + lengths.nbytes) / 2**20,
                     time.time() - started, self.batch_records)

    def epoch(self, epoch):
        """The epoch's batches: dicts of "records" int64 [<= batch_records] (a random order of
        all the records, the same for the same seed, epoch and pipeline) and "seed" int64 []."""
        self.load()
        index, _ = self.pipeline
        order = np.random.default_rng([self.config.seed, epoch, index]).permutation(int(self.starts.shape[0]) - 1)
        base = (_read_seed(self.config, epoch) << 20) + (index << 16)
        # Nothing here to tune; and with autotuning on, dropping an epoch's iterator waited
        # 2-4 s at some epochs' ends (measured on enwiki-AA).
        options = tf.data.Options()
        options.autotune.enabled = False
        return (tf.data.Dataset.from_tensor_slices(order).batch(self.batch_records).enumerate()
                .map(lambda i, records: {"records": records, "seed": base + i}).with_options(options))

    def draw(self, batch):
        """The step's batch (as make_dataset's, without noise words) from one of `epoch`'s."""
        from trainer import kernels  # pylint: disable=import-outside-toplevel

        ids, rows, radius, words = kernels.draw_batch(self.tokens, self.starts, batch["records"], self.keep_t,
                                                      batch["seed"], self.window)
        return {"ids": ids, "rows": rows, "radius": radius, "words": words}


def make_dataset(corpus, config, epoch, input_context=None, batch_size=None, noise=True):
    """One epoch of training batches: runs of kept tokens, with their draws.

    Each element is a dict of `batch_size` centre tokens (the last may be shorter):
      "ids" int64 [N], "rows" int64 [N] (a run id, unique within the epoch),
      "radius" int32 [N] (dynamic window radius of each centre),
      "negatives" int64 [N, M] (M = noise_count(config) noise words of each centre;
      left out when `noise` is false: the fused kernel draws its own), and
      "words" float32 [] (corpus words these centres stand for, before subsampling,
      for the learning-rate schedule and words/s).
    Every centre is paired with each context its radius reaches inside its run; pairs
    are formed by shifting the batch (so contexts cost no extra lookup), which is why
    runs are kept whole and in order within a batch.
    """
    window = config.window if config.window is not None else corpus.window
    sample = config.sample if config.sample is not None else corpus.sample
    keep = tf.constant(keep_probabilities(corpus.counts, sample))
    cdf = tf.constant(noise_cdf(corpus.counts)) if noise else None  # the fused kernel draws its own
    batch_size = batch_size or config.batch_size or DEFAULT_BATCH["tf"]
    negatives, vocab_size, per_read = noise_count(config), len(corpus.vocab), _RECORDS_PER_READ
    base = _read_seed(config, epoch)
    parsed = corpus_reads(corpus, config, epoch, input_context)

    def draw(index, read):
        ids, rows = tf.cast(read["ids"], tf.int64), tf.cast(read["records"], tf.int64) + index * per_read
        seed = tf.stack([tf.constant(base, tf.int64), index])
        kept = tf.random.stateless_uniform(tf.shape(ids), seed) < tf.gather(keep, ids)
        ids, rows, raw = tf.boolean_mask(ids, kept), tf.boolean_mask(rows, kept), tf.shape(ids)[0]
        n = tf.shape(ids)[0]
        radius = tf.random.stateless_uniform([n], seed + 1, minval=1, maxval=window + 1, dtype=tf.int32)
        # Spread this read's raw word count over its kept tokens, so rebatching sums it.
        words = tf.fill([n], tf.cast(raw, tf.float32) / tf.cast(tf.maximum(n, 1), tf.float32))
        element = {"ids": ids, "rows": rows, "radius": radius, "words": words}
        if noise:
            u = tf.random.stateless_uniform([n * negatives], seed + 2)
            drawn = tf.minimum(tf.searchsorted(cdf, u, side="right"), vocab_size - 1)
            element["negatives"] = tf.reshape(tf.cast(drawn, tf.int64), [n, negatives])
        return element

    def total_words(batch):
        batch["words"] = tf.reduce_sum(batch["words"])
        return batch

    batches = (parsed.enumerate()
               .map(draw, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
               .rebatch(batch_size)
               .map(total_words))
    return batches.prefetch(tf.data.AUTOTUNE)


# ------------------------------------------------------------------------- model


def choose_strategy(name, tpu=None):
    """The tf.distribute strategy for --strategy."""
    if name == "tpu" or (name == "auto" and tpu):
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        # All GPUs; without GPUs, every logical CPU device (one unless configured).
        devices = gpus or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if name == "auto" and len(gpus) == 1:
        return tf.distribute.OneDeviceStrategy("/gpu:0")
    return tf.distribute.get_strategy()


def local_devices(strategy):
    """The devices of this process's replicas."""
    try:
        return list(strategy.extended.worker_devices)
    except RuntimeError:  # the default strategy: ops go to the first GPU, if any, else the CPU
        return [d.name for d in tf.config.list_logical_devices("GPU")[:1]] or ["/device:CPU:0"]


def resolve_kernel(name, strategy, config=None):
    """'fused' or 'tf' for --kernel `name` under `strategy`.

    The fused kernel (trainer/kernels) updates the vectors in place on the CPU, so it
    serves one replica per process, on the CPU: one process, or several workers of
    MultiWorkerMirroredStrategy that each train their own copy and exchange it every
    --sync-every-words (trainer/exchange.py). GPUs, TPUs and several replicas in one
    process take the TF step. 'auto' falls back to the TF step, with a warning, where
    the kernel cannot be built, unless `config`'s model needs the fused kernel (CBOW,
    subwords): then that is an error, as is a strategy that takes the TF step.

    Raises:
      ValueError: --kernel fused where it cannot run, or a model the tf kernel does not
        train (`config.needs_fused()`) where only the tf kernel runs.
      kernels.KernelUnavailable: --kernel fused, or such a model, and no kernel builds.
    """
    devices = local_devices(strategy)
    one_cpu_replica = len(devices) == 1 and (tf.DeviceSpec.from_string(devices[0]).device_type or "CPU") == "CPU"
    fits = one_cpu_replica and (strategy.num_replicas_in_sync == 1
                                or isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy))
    needs_fused = config is not None and config.needs_fused()
    if name == "tf" or not fits:
        if needs_fused:
            raise fused_only_error(config, "--kernel tf" if name == "tf" else
                                   f"the strategy {type(strategy).__name__} on {', '.join(devices)}")
        if name == "fused":
            raise ValueError(f"--kernel fused runs on the CPU with one replica per worker process, but the "
                             f"strategy is {type(strategy).__name__} on {', '.join(devices)}: use --kernel "
                             f"tf or auto")
        return "tf"
    if strategy.num_replicas_in_sync > exchange.MAX_FUSED_WORKERS:
        raise too_many_workers_error(strategy.num_replicas_in_sync)
    from trainer import kernels  # pylint: disable=import-outside-toplevel

    try:
        kernels.load()
    except kernels.KernelUnavailable as error:
        if name == "fused" or needs_fused:
            raise
        logging.warning("train: the fused CPU kernel is unavailable, training with TensorFlow ops "
                        "(about 3x slower): %s", error)
        return "tf"
    return "fused"


class SkipGram(tf.Module):
    """Input and output vectors (the tf kernel's update: `sgns_factors`, `apply_factors`).

    With subwords the input table has `input_rows` rows: the words', then the n-gram
    buckets' (trainer/subwords.py), all started as word2vec starts word rows.
    """

    def __init__(self, vocab_size, dim, seed, input_rows=None):
        super().__init__()
        rows = input_rows if input_rows is not None else vocab_size
        init = tf.random.stateless_uniform([rows, dim], [seed, 0], -0.5 / dim, 0.5 / dim)
        aggregation = tf.VariableAggregation.ONLY_FIRST_REPLICA
        self.inputs = tf.Variable(init, name="input_vectors", aggregation=aggregation)
        self.outputs = tf.Variable(tf.zeros([vocab_size, dim]), name="output_vectors",
                                   aggregation=aggregation)


def _rows(handle, ids):
    """Rows of the table behind a resource handle (a replica's own copy of a mirrored table)."""
    return tf.raw_ops.ResourceGather(resource=handle, indices=ids, dtype=tf.float32)


def sgns_factors(inputs, outputs, batch, window, negatives):
    """Closed-form SGNS gradients of a batch of centre tokens, as the factors of its update.

    Contexts are the batch itself shifted by each offset, so their output vectors come
    from one lookup. A centre's M noise words stand for the K = `negatives` noise words
    of each of its pairs: their terms are weighted by the centre's number of contexts
    times K / M, which keeps the expected gradient of word2vec's per-pair sampling.

    The output-row gradients are outer products (a coefficient times a centre's input
    row), so only their coefficients are returned: `apply_factors` rebuilds them, and
    their curvature. That keeps what replicas exchange small (trainer/exchange.py).

    Args:
      inputs, outputs: resource handles of the input and output tables.
      batch: padded to a fixed size (`pad_batch`): ids, rows, radius, negatives.

    Returns:
      (loss summed over pairs, number of pairs, factors: ids, negatives, contexts (each
      centre's number of contexts), grad_in [B, d], curvature [B] (of each centre's
      loss along its input row), context [B, 2W] (the coefficient of each offset's
      pair), noise [B, M] (the coefficient of each noise word)).
    """
    ids, negs = batch["ids"], batch["negatives"]
    v = _rows(inputs, ids)  # [B, d] centre vectors
    c = _rows(outputs, ids)  # [B, d] the same tokens as contexts
    u = _rows(outputs, negs)  # [B, M, d] noise vectors
    c_norms = tf.reduce_sum(c * c, axis=1)
    grad_v, curvature, n_ctx, loss, coefficients = (tf.zeros_like(v), tf.zeros_like(c_norms),
                                                    tf.zeros_like(c_norms), tf.constant(0.0), [])
    for o, mask in zip(offsets(window), context_masks(batch["rows"], batch["radius"], window)):
        m = tf.cast(mask, tf.float32)
        context = shift(c, o)
        logit = tf.reduce_sum(v * context, axis=1)
        g = (tf.sigmoid(logit) - 1.0) * m  # d loss / d logit of the positive pair
        loss += tf.reduce_sum(tf.nn.softplus(-logit) * m)
        grad_v += g[:, None] * context
        curvature += -g * (1.0 + g) * shift(c_norms, o)  # sigmoid' = -g (1 + g)
        coefficients.append(g)
        n_ctx += m
    noise_logit = tf.einsum("nd,nkd->nk", v, u)
    weight = n_ctx[:, None] * (negatives / tf.cast(tf.shape(negs)[1], tf.float32))
    g_noise = tf.sigmoid(noise_logit) * weight
    loss += tf.reduce_sum(tf.nn.softplus(noise_logit) * weight)
    grad_v += tf.einsum("nk,nkd->nd", g_noise, u)
    curvature += tf.reduce_sum(g_noise * (1.0 - tf.sigmoid(noise_logit)) * tf.reduce_sum(u * u, axis=2), axis=1)
    factors = {"ids": tf.cast(ids, tf.int32), "negatives": tf.cast(negs, tf.int32), "contexts": n_ctx,
               "grad_in": grad_v, "curvature": curvature, "context": tf.stack(coefficients, axis=1),
               "noise": g_noise}
    return loss, tf.reduce_sum(n_ctx), factors


def newton_scale(ids, curvature, lr, vocab_size, cap):
    """min(1, cap / (lr H)) for each entry, H the summed curvature of its row's entries."""
    total = tf.math.unsorted_segment_sum(curvature, ids, vocab_size)
    return tf.minimum(1.0, cap / tf.maximum(lr * tf.gather(total, ids), 1e-12))


def apply_factors(inputs, outputs, factors, lr, window, cap, vocab_size, negatives):
    """Applies an update given as factors (one replica's, or all replicas' concatenated).

    A row moves by the sum of its gradients times lr, as in SGD, but never further than
    `cap` times the Newton step of its own part of the batch's loss (the gradient sum
    divided by its curvature H, sigmoid' times the squared norm of the other row, summed
    over the row's terms): by min(lr, cap / H) times the sum. Summing thousands of
    updates of a frequent word computed from the same stale rows overshoots (4,096-token
    updates diverged on Wikipedia without the cap); the cap binds only for such rows, so
    rare and mid-frequency words, and every row early on, get word2vec's full update.

    Reads the centres' input rows before writing anything: they are the rows the
    factors were computed from (every replica's copy is equal at the start of a step).
    """
    ids, negs = factors["ids"], factors["negatives"]
    v = _rows(inputs, ids)
    v_norms = tf.reduce_sum(v * v, axis=1)
    grad_c, h_c = tf.zeros_like(v), tf.zeros_like(v_norms)
    for k, o in enumerate(offsets(window)):
        g = factors["context"][:, k]
        grad_c += shift(g[:, None] * v, -o)
        h_c += shift(-g * (1.0 + g) * v_norms, -o)
    weight = factors["contexts"][:, None] * (negatives / tf.cast(tf.shape(negs)[1], tf.float32))
    sigma = tf.math.divide_no_nan(factors["noise"], weight)  # the noise words' sigmoids
    h_u = factors["noise"] * (1.0 - sigma) * v_norms[:, None]
    grad_u = factors["noise"][:, :, None] * v[:, None, :]
    out_ids = tf.concat([ids, tf.reshape(negs, [-1])], 0)
    out_rows = tf.concat([grad_c, tf.reshape(grad_u, [-1, v.shape[1]])], 0)
    in_step = lr * newton_scale(ids, factors["curvature"], lr, vocab_size, cap)
    out_step = lr * newton_scale(out_ids, tf.concat([h_c, tf.reshape(h_u, [-1])], 0), lr, vocab_size, cap)
    tf.raw_ops.ResourceScatterSub(resource=inputs, indices=ids, updates=in_step[:, None] * factors["grad_in"])
    tf.raw_ops.ResourceScatterSub(resource=outputs, indices=out_ids, updates=out_step[:, None] * out_rows)


def pad_batch(batch, size, noise):
    """The batch padded to `size` centres that pair with nothing (row -1), with static shapes."""
    pad = size - tf.shape(batch["ids"])[0]
    padded = {"ids": tf.pad(batch["ids"], [[0, pad]]), "rows": tf.pad(batch["rows"], [[0, pad]], constant_values=-1),
              "radius": tf.pad(batch["radius"], [[0, pad]]), "negatives": tf.pad(batch["negatives"], [[0, pad], [0, 0]])}
    padded = {k: tf.ensure_shape(x, [size] + ([noise] if k == "negatives" else [])) for k, x in padded.items()}
    padded["words"] = batch["words"]
    return padded


def warm_start(model, vocab, directory):
    """Starts the input vectors of words found in both vocabularies from `directory`.

    For retraining on a grown corpus: words new to the corpus keep their random start.

    Returns:
      the number of words copied.
    """
    from trainer.vectors import WordVectors  # pylint: disable=import-outside-toplevel

    outputs.require_completed(directory, "--init-from", schema.PRODUCER)
    old = WordVectors.load(directory)
    init = model.inputs.numpy()
    if old.dim != init.shape[1]:
        raise ValueError(f"--init-from {directory} holds {old.dim}-dimensional vectors, "
                         f"but --dim is {init.shape[1]}: train with --dim {old.dim}")
    pairs = [(i, old.key_to_index[w]) for i, w in enumerate(vocab) if w in old.key_to_index]
    if pairs:
        rows, old_rows = (np.array(x) for x in zip(*pairs))
        init[rows] = old.vectors[old_rows]
        model.inputs.assign(init)
    logging.info("train: %d of %d words start from %s", len(pairs), len(vocab), directory)
    return len(pairs)


# ------------------------------------------------------------------------ training


def is_chief(strategy):
    """Whether this process writes the outputs (always, but for MultiWorker non-chiefs)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def checkpoint_dir(output, strategy=None):
    """OUTPUT.checkpoints beside the output; non-chief workers write below it, apart."""
    base = output.rstrip("/") + schema.CHECKPOINT_SUFFIX
    if strategy is None or is_chief(strategy):
        return base
    resolver = strategy.cluster_resolver
    return outputs.join(base, f"{resolver.task_type}-{resolver.task_id}")


FINGERPRINT_FILE = schema.CHECKPOINT_FINGERPRINT_FILE


def run_fingerprint(config, corpus, kernel):
    """What checkpoints belong to: the corpus, and the parameters that shape the vectors.

    Kernel, strategy and device may change between a run and its resumption; the batch
    size may not, as a resumed epoch skips the batches it trained, counted in batches.
    --update-tokens, --newton-cap and --sync-every-words may change too: they set how
    the rest is trained, and checkpoints of several fused workers are taken right after
    an exchange, when every worker holds the same tables. The model and its subword rule
    may not (min_n, max_n and buckets are None without --subwords).
    """
    spec = config.subword_spec()
    rule = spec.as_dict() if spec is not None else {"min_n": None, "max_n": None, "buckets": None}
    vocab = "".join(f"{w}\t{c}\n" for w, c in zip(corpus.vocab, corpus.counts.tolist()))
    return {
        "corpus": {"directory": corpus.directory,
                   "inputs_fingerprint": corpus.info.get("inputs", {}).get("fingerprint"),
                   "vocab_sha256": hashlib.sha256(vocab.encode("utf-8")).hexdigest(),
                   "vocab_size": len(corpus.vocab)},
        "parameters": {"dim": config.dim, "seed": config.seed, "epochs": config.epochs,
                       "negatives": config.negatives, "learning_rate": config.learning_rate,
                       "model": config.model, "subwords": config.subwords, **rule,
                       **config.effective(corpus, kernel)},
    }


# What checkpoints written before a parameter was fingerprinted were trained with.
FINGERPRINT_DEFAULTS = {"model": "skipgram", "subwords": False, "min_n": None, "max_n": None, "buckets": None}


def _corpus_text(corpus):
    return (f"{corpus.get('directory')} (inputs fingerprint {str(corpus.get('inputs_fingerprint'))[:12]}, "
            f"vocabulary {str(corpus.get('vocab_sha256'))[:12]} of {corpus.get('vocab_size')} words)")


def fingerprint_differences(recorded, current):
    """What differs between the run that wrote checkpoints and this one, in words."""
    found = []
    old_corpus, corpus = recorded.get("corpus", {}), current["corpus"]
    if any(old_corpus.get(k) != corpus[k] for k in ("inputs_fingerprint", "vocab_sha256")):
        found.append(f"--corpus: they were trained on {_corpus_text(old_corpus)}, this run reads "
                     f"{_corpus_text(corpus)}")
    for name, value in current["parameters"].items():
        old = recorded.get("parameters", {}).get(name, FINGERPRINT_DEFAULTS.get(name))
        if old != value:
            found.append(f"{TrainConfig.flag_of(name)}: theirs is {old}, this run's {value}")
    return found


def restore_or_start(state, ckpt_dir, fingerprint):
    """Restores the latest checkpoint in `ckpt_dir` if it belongs to this run, else starts.

    Returns:
      a CheckpointManager that saves into `ckpt_dir`.

    Raises:
      ValueError: the checkpoints belong to another corpus or other parameters.
    """
    manager = tf.train.CheckpointManager(state.checkpoint, ckpt_dir, max_to_keep=2)
    path = outputs.join(ckpt_dir, FINGERPRINT_FILE)
    if not manager.latest_checkpoint:
        outputs.write_json(path, fingerprint)
        return manager
    fresh = f"Delete {ckpt_dir} to train from the start"
    if not outputs.exists(path):
        raise ValueError(f"{ckpt_dir} holds checkpoints without {FINGERPRINT_FILE}, so nothing tells "
                         f"which corpus and parameters they belong to. {fresh}.")
    differences = fingerprint_differences(json.loads(outputs.read_text(path)), fingerprint)
    if differences:
        raise ValueError(f"{ckpt_dir} holds the checkpoints of another training run, and resuming "
                         f"from them would mix the two: {'; '.join(differences)}. {fresh}, or give "
                         "the corpus and parameters of that run to resume it.")
    state.checkpoint.restore(manager.latest_checkpoint)
    logging.info("train: resumed from %s (epoch %d, step %d)", manager.latest_checkpoint,
                 int(state.epoch.numpy()), int(state.step.numpy()))
    return manager


class TrainState:
    """The vectors and the progress counters: what a checkpoint holds.

    Made under the strategy's scope; every replica holds the same values.
    """

    def __init__(self, vocab_size, dim, seed, input_rows=None):
        first = tf.VariableAggregation.ONLY_FIRST_REPLICA
        self.model = SkipGram(vocab_size, dim, seed, input_rows)
        self.words_done = tf.Variable(0.0, dtype=tf.float64, name="words_done", aggregation=first)
        self.step = tf.Variable(0, dtype=tf.int64, name="step", aggregation=first)
        self.epoch = tf.Variable(0, dtype=tf.int64, name="epoch", aggregation=first)
        self.batches_in_epoch = tf.Variable(0, dtype=tf.int64, name="batches_in_epoch", aggregation=first)
        self.checkpoint = tf.train.Checkpoint(model=self.model, words_done=self.words_done, step=self.step,
                                              epoch=self.epoch, batches_in_epoch=self.batches_in_epoch)

    def learning_rate(self, initial, total_words):
        """Linear decay with the corpus words processed, to _MIN_LR_RATIO of `initial`."""
        progress = tf.cast(self.words_done, tf.float32) / total_words
        return initial * tf.maximum(1.0 - progress, _MIN_LR_RATIO)

    def advance(self, words):
        """Counts one step that processed `words` corpus words."""
        self.words_done.assign_add(tf.cast(words, tf.float64))
        self.step.assign_add(1)
        self.batches_in_epoch.assign_add(1)

    def tables_sha256(self):
        """A hash of this process's copy of both tables."""
        digest = hashlib.sha256()
        for table in (self.model.inputs, self.model.outputs):
            digest.update(table.numpy().tobytes())
        return digest.hexdigest()

    def finite(self):
        """Whether every input and output vector is finite (one pass over both tables)."""
        return all(bool(tf.reduce_all(tf.math.is_finite(v))) for v in (self.model.inputs, self.model.outputs))


def diverged_error(config, ckpt_dir, what):
    """The error of a run whose loss or vectors stopped being finite."""
    rate = config.learning_rate
    return ValueError(
        f"training diverged: {what}. The learning rate is the likely cause: --learning-rate {rate:g} "
        f"is too high for this corpus. Train again with a lower one, such as --learning-rate "
        f"{rate / 10:g} (with the tf kernel, the default --newton-cap and a smaller --update-tokens "
        f"help too), after deleting {ckpt_dir}: its checkpoints hold the diverging run. Nothing was "
        f"published.")


def fused_op(config, table=None):
    """The fused kernel's op of --model and --subwords, called as skipgram_step is.

    Args:
      table: with --subwords, the vocabulary's subword table (trainer.subwords.ngram_table).
    """
    from trainer import kernels  # pylint: disable=import-outside-toplevel

    if table is not None:
        table = tuple(tf.constant(t) for t in table)  # one constant, not one per trace
    if config.model == "cbow":
        return functools.partial(kernels.cbow_step, subwords=table)
    if table is not None:
        return functools.partial(kernels.subword_skipgram_step, subwords=table)
    return kernels.skipgram_step


def starting_rate(config, synced):
    """The learning rate training starts at (then decayed linearly): --learning-rate, times
    --worker-rate-scale for fused-kernel workers that add up their changes (`synced`)."""
    return config.learning_rate * (config.worker_rate_scale if synced else 1.0)


def make_fused_step(state, config, corpus, total_words, loss_every=_LOSS_EVERY, sync=None, worker=0,
                    table=None, memory=None):
    """The step of the fused kernel: the batch updates the vectors in place.

    One replica, or one of several workers each training its own tables (`sync`, a
    exchange.TableSync, counts its words; `worker` keeps its noise draws its own). With
    --model cbow the op counts centres where skip-gram's counts pairs; `table` is the
    subword table of --subwords. With `memory` (an InMemoryCorpus) a batch is one of its
    epochs' and the step draws its tokens first.
    """
    from trainer import kernels  # pylint: disable=import-outside-toplevel

    kernels.load()  # built and loaded now, not while the step is traced
    model, op = state.model, fused_op(config, table)
    noise_prob, noise_alias = (tf.constant(t) for t in kernels.alias_table(corpus.counts ** 0.75))
    seed_base = tf.constant((np.int64(config.seed) << 32) + (np.int64(worker) << 48), tf.int64)
    rate = starting_rate(config, sync is not None)

    def fused_step(batch):
        if memory is not None:
            batch = memory.draw(batch)
        lr = state.learning_rate(rate, total_words)
        # The loss costs a logarithm per update: it is measured on one step in loss_every.
        with_loss = tf.equal(state.step % loss_every, 0)
        loss, pairs = op(model.inputs, model.outputs, batch["ids"], batch["rows"], batch["radius"], noise_prob,
                         noise_alias, lr, seed_base + state.step, with_loss, config.negatives)
        state.advance(batch["words"] if sync is None else sync.count(batch["words"]))
        return loss, lr, pairs, tf.where(with_loss, pairs, 0.0)

    return fused_step


def step_device(strategy):
    """The device to pin the tf step to, or None.

    With one device per worker (MultiWorkerMirroredStrategy on CPU) the values handed to
    the cross-worker all-reduce must carry a device, or TF 2.21 refuses them
    ("destinations can not be empty").
    """
    if strategy.num_replicas_in_sync > 1 and len(strategy.extended.worker_devices) == 1:
        return strategy.extended.worker_devices[0]
    return None


def tf_step_shape(batch_size, update_tokens, replicas):
    """(centres a replica's step takes, centres of each of its sequential updates, updates a
    step) of the tf kernel: the batch over all replicas split among them, each replica's
    share cut into updates of `update_tokens` over all replicas, padded to whole updates."""
    per_replica = max(1, batch_size // replicas)
    chunk = max(1, min(per_replica, update_tokens // replicas))
    chunks = -(-per_replica // chunk)
    return chunks * chunk, chunk, chunks


def batch_slice(batch, start, size):
    """Centres start..start + size of a padded batch (a dynamic slice of static size)."""
    return {k: tf.slice(batch[k], [start] + [0] * (len(batch[k].shape) - 1), [size] + batch[k].shape[1:])
            for k in ("ids", "rows", "radius", "negatives")}


def _update_args(state, config, window):
    return {"window": window, "cap": float(config.newton_cap), "negatives": float(config.negatives),
            "vocab_size": int(state.model.inputs.shape[0])}


def compiled_updates(state, config, window, chunk, jit=True):
    """The tf kernel's updates of one replica's padded batch, compiled with XLA (`jit`):
    `updates(inputs, outputs, batch, lr)` applies the batch as sequential updates of
    `chunk` centres, each capped and sparse, skips those holding only padding, and
    returns (loss, pairs)."""
    args = _update_args(state, config, window)

    @tf.function(jit_compile=jit)
    def updates(inputs, outputs, batch, lr):
        real = tf.shape(batch["rows"])[0] - tf.reduce_sum(tf.cast(batch["rows"] < 0, tf.int32))

        def update(i, loss, pairs):
            part_loss, part_pairs, factors = sgns_factors(inputs, outputs, batch_slice(batch, i * chunk, chunk),
                                                          window, args["negatives"])
            apply_factors(inputs, outputs, factors, lr, **args)
            return i + 1, loss + part_loss, pairs + part_pairs

        _, loss, pairs = tf.while_loop(lambda i, *_: i * chunk < real, update,
                                       (tf.constant(0), tf.constant(0.0), tf.constant(0.0)))
        return loss, pairs

    return updates


def make_tf_step(state, config, total_words, window, shape, jit=True):
    """The step of the tf kernel with one replica: a batch of `shape` (tf_step_shape)
    padded to whole updates, so every step has the same shapes, and applied in one
    program compiled with XLA (`compiled_updates`)."""
    model, (size, chunk, _) = state.model, shape
    updates = compiled_updates(state, config, window, chunk, jit)

    def tf_step(batch):
        lr = state.learning_rate(config.learning_rate, total_words)
        padded = pad_batch(batch, size, noise_count(config))
        loss, pairs = updates(model.inputs.handle, model.outputs.handle, padded, lr)
        state.advance(batch["words"])
        return loss, lr, pairs, pairs

    return tf_step


def make_exchanged_steps(strategy, state, config, total_words, window, shape, jit=True):
    """make_train_steps for the tf kernel on several replicas.

    Every update of a step is its own `strategy.run` (TF's replica functions cannot hold
    a collective inside a loop): each replica computes the factors of its part of the
    update, all replicas all-gather them and each applies all of them to its own copy of
    the tables (trainer/exchange.py), so the copies stay equal. The gradients and the
    apply are compiled with XLA (`jit`), the collective between them is not.
    """
    model, (size, chunk, chunks), device = state.model, shape, step_device(strategy)
    args, payload = _update_args(state, config, window), {}  # bytes a replica sends, found when traced
    factors_of = tf.function(functools.partial(sgns_factors, window=window, negatives=args["negatives"]),
                             jit_compile=jit)
    apply = tf.function(functools.partial(apply_factors, **args), jit_compile=jit)

    def pinned():  # see step_device; tf.device(None) would drop the replica's own device
        return tf.device(device) if device is not None else contextlib.nullcontext()

    def replica_update(batch, i, lr):
        with pinned():
            tables = (model.inputs.handle, model.outputs.handle)  # this replica's own copies
            loss, pairs, factors = factors_of(*tables, batch_slice(batch, i * chunk, chunk))
            factors, (loss, pairs), payload["update"] = exchange.gather_factors(
                tf.distribute.get_replica_context(), factors, [loss, pairs])
            apply(*tables, factors, lr)
            return loss, pairs

    def replica_words(batch):
        with pinned():
            words = tf.identity(batch["words"])
            payload["words"] = exchange.payload_bytes([words])
            return words

    def first(value):  # a value every replica holds alike
        return strategy.experimental_local_results(value)[0]

    @tf.function
    def train_steps(iterator, n):
        loss_sum, pairs_sum, lr, done = tf.constant(0.0), tf.constant(0.0), tf.constant(0.0), tf.constant(0)
        for _ in tf.range(n):
            batch = iterator.get_next_as_optional()
            if not batch.has_value():
                break
            lr = state.learning_rate(config.learning_rate, total_words)
            padded = strategy.run(functools.partial(pad_batch, size=size, noise=noise_count(config)),
                                  args=(batch.get_value(),))
            for i in tf.range(chunks):
                loss, pairs = strategy.run(replica_update, args=(padded, i, lr))
                loss_sum, pairs_sum = loss_sum + first(loss), pairs_sum + first(pairs)
            state.advance(strategy.reduce(tf.distribute.ReduceOp.SUM,
                                          strategy.run(replica_words, args=(batch.get_value(),)), axis=None))
            done += 1
        return loss_sum, pairs_sum, pairs_sum, lr, done

    train_steps.step_bytes = lambda: strategy.num_replicas_in_sync * (chunks * payload["update"] + payload["words"])
    return train_steps


def make_train_steps(strategy, replica_step):
    """A tf.function that runs up to n steps of `replica_step` from a distributed iterator.

    It returns (loss sum, pairs, pairs the loss was measured on, last lr, steps run).
    """

    @tf.function
    def train_steps(iterator, n):
        loss_sum, pairs_sum, loss_pairs_sum = tf.constant(0.0), tf.constant(0.0), tf.constant(0.0)
        lr, done = tf.constant(0.0), tf.constant(0)
        for _ in tf.range(n):
            batch = iterator.get_next_as_optional()
            if not batch.has_value():
                break
            loss, step_lr, pairs, loss_pairs = strategy.run(replica_step, args=(batch.get_value(),))
            loss_sum += strategy.reduce(tf.distribute.ReduceOp.MEAN, loss, axis=None)
            pairs_sum += strategy.reduce(tf.distribute.ReduceOp.MEAN, pairs, axis=None)
            loss_pairs_sum += strategy.reduce(tf.distribute.ReduceOp.MEAN, loss_pairs, axis=None)
            lr = strategy.reduce(tf.distribute.ReduceOp.MEAN, step_lr, axis=None)
            done += 1
        return loss_sum, pairs_sum, loss_pairs_sum, lr, done

    return train_steps


class Meter:
    """Training stats; a loss-curve point every 1/_CURVE_POINTS of the training, and a log
    line and TensorBoard summaries at those points and every _LOG_EVERY_SECONDS."""

    def __init__(self, logs_dir, total_words, words_done):
        self.writer = tf.summary.create_file_writer(logs_dir)
        self.total_words = total_words
        self.stats = {"steps": 0, "pairs": 0.0, "seconds": 0.0, "loss_curve": []}
        self.words_at_start = self.words_at_log = float(words_done.numpy())
        self.next_point = (math.floor(_CURVE_POINTS * self.words_at_start / total_words) + 1) / _CURVE_POINTS
        self.started = self.last_log = time.time()
        self.pairs_since = self.loss_sum = self.loss_pairs = 0.0

    def add(self, steps, loss, pairs, measured):
        """Counts `steps` steps: their loss sum, pairs, and pairs the loss was measured on."""
        self.pairs_since += pairs
        self.loss_sum += loss
        self.loss_pairs += measured
        self.stats["steps"] += steps
        self.stats["pairs"] += pairs

    def maybe_log(self, epoch, step, words_done, lr):
        now = time.time()
        words_now = float(words_done.numpy())
        progress = words_now / self.total_words
        at_point = progress >= self.next_point and self.loss_pairs > 0
        if not at_point and now - self.last_log < _LOG_EVERY_SECONDS:
            return
        if at_point:
            self.next_point = (math.floor(_CURVE_POINTS * progress) + 1) / _CURVE_POINTS
        wps = (words_now - self.words_at_log) / max(now - self.last_log, 1e-9)
        mean_loss = self.loss_sum / self.loss_pairs if self.loss_pairs else float("nan")
        logging.info("train: epoch %d step %d  %.1f%%  loss/pair %.4f  lr %.5f  %.0f words/s  %.0f pairs/s",
                     epoch + 1, step, 100 * progress, mean_loss, lr, wps,
                     self.pairs_since / max(now - self.last_log, 1e-9))
        with self.writer.as_default(step=step):
            tf.summary.scalar("loss_per_pair", mean_loss)
            tf.summary.scalar("learning_rate", lr)
            tf.summary.scalar("words_per_second", wps)
        self.stats["loss_curve"].append([step, round(progress, 4), mean_loss])
        self.last_log, self.words_at_log = now, words_now
        self.pairs_since = self.loss_sum = self.loss_pairs = 0.0

    def finish(self, words_done, **extra):
        """The stats of the whole run, with `extra` added."""
        stats = self.stats
        stats["seconds"] = time.time() - self.started
        stats["words"] = float(words_done.numpy()) - self.words_at_start
        stats["words_per_second"] = stats["words"] / max(stats["seconds"], 1e-9)
        stats.update(extra)
        self.writer.flush()
        return stats


@dataclasses.dataclass
class EpochLoop:
    """Runs the epochs left, checkpointing every --checkpoint-every-steps and at epoch ends."""

    config: TrainConfig
    corpus: Corpus
    strategy: object
    kernel: str
    batch_size: int
    state: TrainState
    manager: tf.train.CheckpointManager
    train_steps: object
    meter: Meter
    steps_per_call: int = 100
    step_bytes: object = None  # () -> bytes all replicas exchange in a step (known once traced)
    memory: object = None  # an InMemoryCorpus, or None: the window files are read every epoch

    def run(self):
        for epoch in range(int(self.state.epoch.numpy()), self.config.epochs):
            if self.run_epoch(epoch):
                return  # --max-steps reached
            self.state.epoch.assign(epoch + 1)
            self.state.batches_in_epoch.assign(0)
            self.save(self.checkpoint_step())
            logging.info("train: epoch %d done", epoch + 1)

    def checkpoint_step(self):
        """The step number checkpoints are saved under."""
        return int(self.state.step.numpy())

    def exchanged(self):
        """Payload bytes the replicas exchanged in this process's steps (trainer/exchange.py)."""
        steps = self.meter.stats["steps"]
        return {"bytes_exchanged": steps * self.step_bytes() if self.step_bytes and steps else 0}

    def batches(self, epoch):
        """The epoch's distributed batches, past those a resumed run already trained."""
        per_replica = max(1, self.batch_size // self.strategy.num_replicas_in_sync)
        if self.memory is not None:
            dataset_fn = lambda _: self.memory.epoch(epoch)  # noqa: E731
        else:
            dataset_fn = functools.partial(make_dataset, self.corpus, self.config, epoch,
                                           batch_size=per_replica, noise=self.kernel == "tf")
        iterator = iter(self.strategy.distribute_datasets_from_function(dataset_fn))
        for _ in range(int(self.state.batches_in_epoch.numpy())):  # the same draws: skip them
            next(iterator)
        return iterator

    def run_epoch(self, epoch):
        """Trains one epoch; returns True when --max-steps stopped it first."""
        iterator = self.batches(epoch)
        every = self.config.checkpoint_every_steps
        while True:
            n = min(self.steps_per_call, every)
            if self.config.max_steps is not None:
                n = min(n, self.config.max_steps - int(self.state.step.numpy()))
                if n <= 0:
                    return True
            before = int(self.state.step.numpy())
            loss, pairs, measured, lr, done = self.train_steps(iterator, tf.constant(n))
            done, loss = int(done), float(loss)
            if done == 0:
                return False
            if not math.isfinite(loss):
                raise self.diverged(f"the loss is {loss} in steps {before + 1} to {before + done}")
            self.meter.add(done, loss, float(pairs), float(measured))
            if (before + done) // every > before // every:
                self.save(before + done)
            self.meter.maybe_log(epoch, before + done, self.state.words_done, float(lr))
            if self.stop_agreed():
                raise self.terminated(before + done)

    def stop_agreed(self):
        """True when SIGTERM reached this process, or, with several workers, any of them:
        every worker then saves and stops at the same step."""
        local = 1.0 if main.stop_requested() else 0.0
        if not isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return local > 0
        return self.sum_over_workers(local) > 0

    def sum_over_workers(self, value):
        """`value` summed over the workers (a collective every worker must call)."""
        per_replica = self.strategy.run(tf.identity, args=(tf.constant(float(value)),))
        return float(self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None))

    def all_saved(self):
        """Returns once every worker is done with its last checkpoint: the chief removes
        the checkpoints, every worker's, once it has published the output."""
        if isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy):
            self.sum_over_workers(1.0)

    def save(self, step):
        """Checkpoints, unless the vectors stopped being finite (then raises)."""
        if not self.state.finite():
            raise self.diverged(f"the vectors hold NaN or infinite values at step {step}")
        self.manager.save(checkpoint_number=step)

    def diverged(self, what):
        return diverged_error(self.config, self.manager.directory, what)

    def terminated(self, step):
        """Saves a checkpoint at `step`; returns the error that ends the run (SIGTERM)."""
        self.save(step)
        return main.Terminated(f"stopped by SIGTERM at step {step}; checkpoint saved in "
                               f"{self.manager.directory}: the same command resumes from it")


@dataclasses.dataclass
class SyncedEpochLoop(EpochLoop):
    """The epochs of workers that each train their own tables with the fused kernel and
    exchange them every --sync-every-words words (exchange.TableSync).

    A round is HOT_EXCHANGES parts of `steps_per_part` steps (about --sync-every-words
    words a worker in all), each part followed by an exchange of the frequent words'
    rows, the last by a full one. A worker whose epoch's batches ran out, or that got
    SIGTERM, trains no more but keeps exchanging until the others are done. Everything
    that needs the workers together (an epoch's end, a checkpoint, a stop, divergence)
    is decided from the values the full exchange agrees on, so every worker decides the
    same at the same exchange. Checkpoints are numbered by the chief's step.
    """

    sync: exchange.TableSync = None
    worker: tuple = (0, 1)  # (this worker's input pipeline, number of workers)
    steps_per_part: int = 1  # steps between two exchanges (hot or full)
    agreed_step: int | None = None
    last_lr: float = 0.0

    def batches(self, epoch):
        """This worker's share of the epoch (a local pipeline: no collective per batch)."""
        index, workers = self.worker
        if self.memory is not None:
            iterator = iter(self.memory.epoch(epoch))
        else:
            context = tf.distribute.InputContext(num_input_pipelines=workers, input_pipeline_id=index,
                                                 num_replicas_in_sync=workers)
            iterator = iter(make_dataset(self.corpus, self.config, epoch, input_context=context,
                                         batch_size=max(1, self.batch_size // workers), noise=False))
        for _ in range(int(self.state.batches_in_epoch.numpy())):  # the same draws: skip them
            next(iterator)
        return iterator

    def checkpoint_step(self):
        return self.agreed_step if self.agreed_step is not None else super().checkpoint_step()

    def exchanged(self):
        return {"bytes_exchanged": self.sync.bytes_exchanged(), "exchanges": self.sync.exchanges,
                "hot_exchanges": self.sync.hot_exchanges, "exchange_seconds": self.sync.seconds,
                "rows_changed": self.sync.touched_rows, "touched_rows_bytes": self.sync.touched_bytes()}

    def run_epoch(self, epoch):
        """Trains one epoch in rounds; returns True when --max-steps stopped it first."""
        iterator, finished, every = self.batches(epoch), False, self.config.checkpoint_every_steps
        chief, workers, bad_loss = is_chief(self.strategy), self.worker[1], None
        while True:
            for part in range(1, exchange.HOT_EXCHANGES + 1):
                if not finished and bad_loss is None:
                    finished, bad_loss = self.train_round(iterator, self.steps_per_part)
                if part < exchange.HOT_EXCHANGES:
                    self.sync.exchange_hot()
            step = int(self.state.step.numpy())
            maxed = self.config.max_steps is not None and step >= self.config.max_steps
            agreed = self.sync.exchange(finished=finished, stop=main.stop_requested(), max_steps=maxed,
                                        diverged=bad_loss is not None, chief_step=step if chief else 0)
            before, self.agreed_step = self.agreed_step, int(agreed["chief_step"])
            if agreed["diverged"]:
                raise self.diverged(bad_loss or f"a worker's loss is not finite by step {self.agreed_step}")
            if agreed["stop"]:
                raise self.terminated(self.agreed_step)
            if agreed["max_steps"]:
                return True
            if agreed["finished"] == workers:
                return False
            if before is not None and self.agreed_step // every > before // every:
                self.save(self.agreed_step)
            self.meter.maybe_log(epoch, self.agreed_step, self.state.words_done, self.last_lr)

    def train_round(self, iterator, steps):
        """Trains this worker `steps` steps (every worker trains as many tokens a step, so
        they reach the exchange together), less if SIGTERM comes or --max-steps is reached.

        Returns:
          (whether the epoch's batches ran out, what was not finite or None).
        """
        while steps > 0 and not main.stop_requested():
            n = min(steps, self.steps_per_call)
            if self.config.max_steps is not None:
                n = min(n, self.config.max_steps - int(self.state.step.numpy()))
                if n <= 0:
                    return False, None
            loss, pairs, measured, lr, done = self.train_steps(iterator, tf.constant(n))
            done, loss, steps = int(done), float(loss), steps - n
            if done and not math.isfinite(loss):
                return False, f"the loss is {loss} in the {done} steps before step {int(self.state.step.numpy())}"
            if done:
                self.meter.add(done, loss, float(pairs), float(measured))
                self.last_lr = float(lr)
            if done < n:
                return True, None
        return False, None


def worker_position(strategy):
    """(this process's index among the workers, number of workers) of a multi-worker strategy."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return 0, 1
    cluster = resolver.cluster_spec().as_dict()
    chiefs, workers = len(cluster.get("chief", [])), len(cluster.get("worker", []))
    index = 0 if resolver.task_type == "chief" else chiefs + resolver.task_id
    return index, chiefs + workers


def make_loop(config, corpus, strategy, kernel, effective, state, manager, ckpt_dir, table=None):
    """The epoch loop of this kernel and strategy, its step built (`table`: the subword
    table of --subwords)."""
    total_words = float(config.epochs) * corpus.total_words
    replicas, batch_size = strategy.num_replicas_in_sync, effective["batch_size"]
    # A short training (the bundled sample: ~200 steps) still gets _CURVE_POINTS points of
    # loss: fewer steps a call, the loss measured on more of them.
    expected_steps = max(1, int(total_words / batch_size))
    steps_per_call = max(1, min(100, expected_steps // (2 * _CURVE_POINTS)))
    meter = Meter(outputs.join(ckpt_dir, schema.LOGS_DIR), total_words, state.words_done)
    common = (config, corpus, strategy, kernel, batch_size, state, manager)
    if kernel == "tf":
        shape = tf_step_shape(batch_size, config.update_tokens, replicas)
        if replicas == 1:
            steps = make_train_steps(strategy, make_tf_step(state, config, total_words, effective["window"], shape))
            return EpochLoop(*common, steps, meter, steps_per_call)
        steps = make_exchanged_steps(strategy, state, config, total_words, effective["window"], shape)
        return EpochLoop(*common, steps, meter, steps_per_call, steps.step_bytes)
    loss_every = max(1, min(_LOSS_EVERY, expected_steps // (4 * _CURVE_POINTS)))
    worker = worker_position(strategy) if replicas > 1 else (0, 1)
    memory = None
    if InMemoryCorpus.fits(corpus):  # else the window files are read and parsed every epoch
        memory = InMemoryCorpus(corpus, config, max(1, batch_size // replicas), worker)
    if replicas == 1:
        replica_step = make_fused_step(state, config, corpus, total_words, loss_every, table=table, memory=memory)
        return EpochLoop(*common, make_train_steps(strategy, replica_step), meter, steps_per_call, memory=memory)
    # Exchanges come after a number of steps the same for every worker (a step is as many
    # tokens on each): the steps that hold --sync-every-words / HOT_EXCHANGES corpus words.
    kept = keep_probabilities(corpus.counts, effective["sample"])
    words_per_step = (batch_size // replicas) * corpus.total_words / float((corpus.counts * kept).sum())
    steps_per_part = max(1, round(config.sync_every_words / exchange.HOT_EXCHANGES / words_per_step))
    sync = exchange.TableSync(strategy, [state.model.inputs, state.model.outputs], state.words_done,
                              replicas, step_device(strategy))
    replica_step = make_fused_step(state, config, corpus, total_words, loss_every, sync, worker[0], table, memory)
    # Local steps: the default strategy (outside any scope) runs them in this process alone.
    local_steps = make_train_steps(tf.distribute.get_strategy(), replica_step)
    return SyncedEpochLoop(*common, local_steps, meter, steps_per_call, memory=memory, sync=sync, worker=worker,
                           steps_per_part=steps_per_part)


def replica_difference(strategy, state):
    """The largest difference between this process's copies of the tables (0: identical)."""
    copies = [strategy.experimental_local_results(t) for t in (state.model.inputs, state.model.outputs)]
    return max((float(tf.reduce_max(tf.abs(c[0] - other))) for c in copies for other in c[1:]), default=0.0)


def train(config):
    """Trains and returns (WordVectors, training stats, Corpus). Resumes from checkpoints.

    Raises:
      ValueError: the checkpoints beside the output belong to another run; a window
        shard is damaged; training diverged (a loss or vectors not finite); --model cbow
        or --subwords where only the tf kernel runs.
    """
    corpus = load_corpus(config.corpus)
    strategy = choose_strategy(config.strategy, config.tpu)
    kernel = resolve_kernel(config.kernel, strategy, config)
    effective = config.effective(corpus, kernel)
    spec = config.subword_spec()
    logging.info("train: %s%s, %d words in vocabulary, %d corpus words, strategy %s with %d replica(s), "
                 "%s kernel, %d tokens a step", config.model, " with subwords" if spec is not None else "",
                 len(corpus.vocab), corpus.total_words, type(strategy).__name__,
                 strategy.num_replicas_in_sync, kernel, effective["batch_size"])
    table = ngram_table(corpus.vocab, *spec) if spec is not None else None
    input_rows = len(corpus.vocab) + spec.buckets if spec is not None else None
    if kernel == "fused" and strategy.num_replicas_in_sync > 1:
        state = TrainState(len(corpus.vocab), config.dim, config.seed, input_rows)  # this worker's own tables
    else:
        with strategy.scope():
            state = TrainState(len(corpus.vocab), config.dim, config.seed, input_rows)
    if config.init_from:
        warm_start(state.model, corpus.vocab, config.init_from)  # a checkpoint, if any, wins below
    ckpt_dir = checkpoint_dir(config.output, strategy)
    manager = restore_or_start(state, ckpt_dir, run_fingerprint(config, corpus, kernel))
    loop = make_loop(config, corpus, strategy, kernel, effective, state, manager, ckpt_dir, table)
    try:
        with main.cooperating():
            loop.run()
            loop.all_saved()
    except tf.errors.DataLossError as error:
        raise damaged_shard_error(corpus, error) from None
    if not state.finite():
        raise loop.diverged("the vectors hold NaN or infinite values at the end of training")
    stats = meter_stats(loop, strategy, kernel, effective["batch_size"])
    stats["tables_sha256"] = state.tables_sha256()  # equal on every worker, as the tables are
    if kernel == "tf" and len(local_devices(strategy)) > 1:  # several copies in this process
        stats["replica_max_difference"] = replica_difference(strategy, state)
    return trained_vectors(corpus, state.model.inputs.numpy(), spec, table), stats, corpus


def trained_vectors(corpus, inputs, spec=None, table=None):
    """The WordVectors of a trained input table: its rows, or with subwords (`spec`, `table`)
    every word's composed vector, the mean of its subword rows (as fastText exports them),
    and the n-gram rows after the words'."""
    from trainer.vectors import WordVectors  # pylint: disable=import-outside-toplevel

    vocab_size = len(corpus.vocab)
    if spec is None:
        return WordVectors(corpus.vocab, inputs, corpus.counts)
    composed = np.empty((vocab_size, inputs.shape[1]), np.float32)
    for start in range(0, vocab_size, 4096):  # a few words at a time: their rows, gathered, are large
        stop = min(start + 4096, vocab_size)
        first, last = table.offsets[start], table.offsets[stop]
        sums = np.add.reduceat(inputs[table.rows[first:last]], table.offsets[start:stop] - first, axis=0)
        composed[start:stop] = sums / np.diff(table.offsets[start:stop + 1])[:, None]
    return WordVectors(corpus.vocab, composed, corpus.counts, spec, inputs[vocab_size:])


def meter_stats(loop, strategy, kernel, batch_size):
    """The run's training stats for info.json, the exchanged bytes included."""
    stats = loop.meter.finish(loop.state.words_done, strategy=type(strategy).__name__,
                              replicas=strategy.num_replicas_in_sync, kernel=kernel,
                              batch_size=batch_size, chief=is_chief(strategy),
                              learning_rate=starting_rate(loop.config, isinstance(loop, SyncedEpochLoop)),
                              **loop.exchanged())
    stats["bytes_exchanged_per_word"] = stats["bytes_exchanged"] / max(stats["words"], 1e-9)
    if "touched_rows_bytes" in stats:  # fused workers: what sending only changed rows would have cost
        stats["touched_rows_bytes_per_word"] = stats["touched_rows_bytes"] / max(stats["words"], 1e-9)
    return stats


# ------------------------------------------------------------------------ exports


class EmbeddingServer(tf.Module):
    """Raw strings -> token ids through the corpus transform_fn -> vectors.

    With subwords, a token outside the vocabulary gets the mean of its n-gram rows,
    hashed in the graph as training hashed them (`trainer.subwords.ngram_buckets_tf`):
    its string comes from the tokenizer itself (core/tokens.py `tokenize`), run beside the
    transform_fn, which yields only ids.
    """

    def __init__(self, transform_output_dir, vectors):
        super().__init__()
        self.tft_layer, _ = tokens.transform_layer(transform_output_dir)
        rows = vectors.vectors
        self.table = tf.Variable(np.concatenate([rows, np.zeros((1, rows.shape[1]), np.float32)]),
                                 trainable=False, name="vectors_with_oov_row")
        self.vocab_size = rows.shape[0]
        self.subwords = vectors.subwords is not None
        if self.subwords:
            # Plain ints: tf.Module would wrap a tuple attribute.
            self.min_n, self.max_n, self.buckets = (int(x) for x in vectors.subwords)
            self.ngram_vectors = tf.Variable(vectors.ngram_vectors, trainable=False, name="ngram_vectors")

    def ngram_means(self, words):
        """The mean of each word's n-gram rows ([M] strings -> [M, dim]), and whether it has one."""
        buckets = ngram_buckets_tf(words, SubwordSpec(self.min_n, self.max_n, self.buckets))
        sums = tf.math.unsorted_segment_sum(tf.gather(self.ngram_vectors, buckets.flat_values),
                                            buckets.value_rowids(), tf.shape(words)[0])
        counts = buckets.row_lengths()
        return sums / tf.cast(tf.maximum(counts, 1), tf.float32)[:, None], counts > 0

    def token_vectors(self, text, ids):
        """The flat tokens' vectors [T, dim] and whether each has one [T]."""
        flat = ids.flat_values
        known = flat < self.vocab_size
        vecs = tf.gather(self.table, tf.where(known, flat, tf.cast(self.vocab_size, tf.int64)))
        if not self.subwords:
            return vecs, known
        words = tokens.tokenize(text)
        tf.debugging.assert_equal(words.row_lengths(), ids.row_lengths(), message=(
            "the corpus job's transform_fn and core/tokens.py split this text differently: "
            "export the vectors again with the code that wrote the corpus"))
        unknown = tf.where(~known)
        means, found = self.ngram_means(tf.gather_nd(words.flat_values, unknown))
        return (tf.tensor_scatter_nd_update(vecs, unknown, means),
                tf.tensor_scatter_nd_update(known, unknown, found))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=schema.SERVING_INPUT)])
    def serve(self, text):
        ids = tokens.ragged_ids(self.tft_layer, text)
        flat_vecs, flat_mask = self.token_vectors(text, ids)
        mask = ids.with_flat_values(flat_mask).to_tensor(default_value=False)
        vecs = ids.with_flat_values(flat_vecs * tf.cast(flat_mask, tf.float32)[:, None]).to_tensor()
        count = tf.reduce_sum(tf.cast(mask, tf.float32), axis=1, keepdims=True)
        mean = tf.reduce_sum(vecs, axis=1) / tf.maximum(count, 1.0)
        return {schema.SERVING_VECTORS: vecs, schema.SERVING_MASK: mask, schema.SERVING_MEAN: mean,
                schema.SERVING_TOKEN_IDS: ids.to_tensor(default_value=-1)}


def export(vectors, corpus_dir, out_dir):
    """Writes every export of the embeddings into `out_dir` (see jobs/train.py)."""
    vectors.save(out_dir)
    vectors.save_word2vec_format(outputs.join(out_dir, schema.WORD2VEC_TXT))
    formats.write_vectors(outputs.join(out_dir, schema.WORD2VEC_BIN), vectors.index_to_key, vectors.vectors,
                          "word2vec-binary")
    if not outputs.is_remote(out_dir):
        os.makedirs(os.path.join(out_dir, "projector"), exist_ok=True)
    outputs.write_text(outputs.join(out_dir, schema.PROJECTOR_VECTORS_TSV),
                         "".join("\t".join(f"{x:.6g}" for x in row) + "\n" for row in vectors.vectors))
    outputs.write_text(outputs.join(out_dir, schema.PROJECTOR_METADATA_TSV),
                         "word\tcount\n" + "".join(f"{w}\t{c}\n" for w, c in zip(vectors.index_to_key,
                                                                                 vectors.counts)))
    server = EmbeddingServer(corpus_dir, vectors)
    tf.saved_model.save(server, outputs.join(out_dir, schema.SAVED_MODEL_DIR),
                        signatures={"serving_default": server.serve})
