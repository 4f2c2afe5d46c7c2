"""Skip-gram with negative sampling under tf.distribute: data, model, loop, exports.

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

Model and update: input vectors W (uniform in +-0.5/dim, as word2vec) and output
vectors C (zeros). Each step takes a batch of --batch-size consecutive kept tokens
(whole runs, in order); every token is a centre, paired with each context its radius
reaches in the same run. The learning rate decays linearly with the corpus words
processed, from --learning-rate to 1e-4 of it, as word2vec does. Two kernels (--kernel):

  * fused (default on a CPU with one replica; trainer/kernels): a C++ op that trains
    pair by pair in place, word2vec's own update: the context's input vector against
    the centre's output vector and --negatives noise words drawn for that pair, the
    batch split over TensorFlow's intra-op threads without locks (Hogwild).
  * tf (GPUs, TPUs, several replicas): TensorFlow ops only. Contexts come from shifting
    the batch (no extra lookup); a centre's --noise-per-centre noise words stand for the
    K noise words of each of its pairs (their terms weighted by its number of contexts:
    the expected gradient of word2vec's per-pair sampling). Gradients are computed in
    closed form and applied as sparse scatter updates, summed over the batch; with
    several replicas the dense sums are all-reduced so every replica applies all of them.

Safety, each a ValueError that says what to do: the window shards are checked against
the sizes the corpus job recorded before any work, and a damaged record met while
training names its shard; checkpoints are resumed only by the run they belong to
(`run_fingerprint`); a loss that is not finite (after every call of the step loop) or
vectors that are not (before every checkpoint and before the vectors are returned for
export) stop a diverging run.
"""

import argparse
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

STRATEGIES = ("auto", "cpu", "mirrored", "multiworker", "tpu")
KERNELS = ("auto", "fused", "tf")
DEFAULT_BATCH = {"fused": 16384, "tf": 1024}  # centre tokens per step, by kernel
_MIN_LR_RATIO = 1e-4
_LOSS_EVERY = 8  # the fused kernel measures the loss on one step in this many (at most)
_CURVE_POINTS = 40  # the loss curve gets a point every 1/40 of the training, at least
_LOG_EVERY_SECONDS = 10.0
_RECORDS_PER_READ = 64  # window records read (and drawn for) together; shapes the draws


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
                         "pairs; unset: 3 x --negatives")
    learning_rate: float = param(0.025, gt=0, help="starting learning rate, decayed linearly")
    # Over all replicas. The tf kernel sums a batch's updates, and larger batches sum so many
    # updates of frequent words that training diverges (4096 does on Wikipedia); the fused
    # kernel applies every pair's update at once, so its batch size only sets the overhead.
    batch_size: int | None = param(
        None, ge=1, help=f"centre tokens per step; unset: {DEFAULT_BATCH['fused']} with the fused "
                         f"kernel, {DEFAULT_BATCH['tf']} with the tf kernel")
    kernel: str = param("auto", choices=KERNELS,
                        help="fused: a C++ op that trains pair by pair in place, on the CPU with one "
                             "replica (built on first use); tf: TensorFlow ops, on any device and "
                             "strategy; auto: fused where it applies and builds, else tf")
    window: int | None = param(None, ge=1, help="skip-gram window radius; unset: the corpus job's")
    sample: float | None = param(None, ge=0, lt=1,
                                 help="frequent-word subsampling threshold; unset: the corpus job's")
    strategy: str = param("auto", choices=STRATEGIES, help="tf.distribute strategy")
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

    def effective(self, corpus, kernel):
        """The values this run trains with: window, sample and batch size resolved."""
        return {"window": self.window if self.window is not None else corpus.window,
                "sample": self.sample if self.sample is not None else corpus.sample,
                "batch_size": self.batch_size if self.batch_size is not None else DEFAULT_BATCH[kernel]}


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


def load_corpus(directory):
    """The corpus job output at `directory`, its window shards checked against its info.json."""
    info = outputs.require_completed(directory, "--corpus", corpus_schema.PRODUCER)
    if info.get("job") != "corpus":
        raise ValueError(f"--corpus {directory} is the output of `{info.get('job')}`, not of the corpus job")
    text = outputs.read_text(outputs.join(directory, corpus_schema.VOCAB_FILE))
    rows = [line.split("\t") for line in text.splitlines()]
    pattern = outputs.join(directory, corpus_schema.WINDOWS_DIR, "*")
    sizes = {m.path: m.size_in_bytes for m in FileSystems.match([pattern])[0].metadata_list}
    if not sizes:
        raise FileNotFoundError(f"--corpus {directory} holds no window files")
    check_window_shards(directory, sizes, info.get("windows", {}).get("shard_bytes"))
    return Corpus(directory, [r[0] for r in rows], np.array([int(r[1]) for r in rows], dtype=np.int64),
                  sorted(sizes), info["parameters"]["window"], info["parameters"]["sample"], info)


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
    """Noise words drawn per centre token."""
    return config.noise_per_centre if config.noise_per_centre is not None else 3 * config.negatives


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
    base = np.int64(config.seed) * 1_000_003 + epoch * 7919

    files = tf.data.Dataset.from_tensor_slices(corpus.window_files)
    if input_context is not None and input_context.num_input_pipelines > 1:
        files = files.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    files = files.shuffle(len(corpus.window_files), seed=int(base % (2**31)), reshuffle_each_iteration=False)
    records = files.interleave(tf.data.TFRecordDataset, cycle_length=4, block_length=16,
                               num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    records = records.shuffle(4096, seed=int((base + 1) % (2**31)), reshuffle_each_iteration=False)

    def draw(index, serialized):
        parsed = tf.io.parse_example(serialized, corpus_schema.WINDOWS_FEATURE_SPEC)
        sparse = parsed[corpus_schema.TOKEN_IDS_KEY]
        ids, rows = sparse.values, sparse.indices[:, 0] + index * per_read
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

    batches = (records.batch(per_read).enumerate()
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


def resolve_kernel(name, strategy):
    """'fused' or 'tf' for --kernel `name` under `strategy`.

    The fused kernel (trainer/kernels) updates the vectors in place on the CPU, so it
    serves one replica on the CPU; GPUs, TPUs and several replicas take the TF step.
    'auto' falls back to the TF step, with a warning, where the kernel cannot be built.
    """
    try:
        devices = list(strategy.extended.worker_devices)
    except RuntimeError:  # the default strategy: ops go to the first GPU, if any, else the CPU
        devices = [d.name for d in tf.config.list_logical_devices("GPU")[:1]] or ["/device:CPU:0"]
    on_one_cpu = strategy.num_replicas_in_sync == 1 and all(
        (tf.DeviceSpec.from_string(d).device_type or "CPU") == "CPU" for d in devices)
    if name == "tf":
        return "tf"
    if not on_one_cpu:
        if name == "fused":
            raise ValueError(f"--kernel fused runs on the CPU with one replica, but the strategy is "
                             f"{type(strategy).__name__} on {', '.join(devices)}: use --kernel tf or auto")
        return "tf"
    from trainer import kernels  # pylint: disable=import-outside-toplevel

    try:
        kernels.load()
    except kernels.KernelUnavailable as error:
        if name == "fused":
            raise
        logging.warning("train: the fused CPU kernel is unavailable, training with TensorFlow ops "
                        "(about 3x slower): %s", error)
        return "tf"
    return "fused"


class SkipGram(tf.Module):
    """Input and output vectors and the sparse negative-sampling update."""

    def __init__(self, vocab_size, dim, seed):
        super().__init__()
        init = tf.random.stateless_uniform([vocab_size, dim], [seed, 0], -0.5 / dim, 0.5 / dim)
        aggregation = tf.VariableAggregation.ONLY_FIRST_REPLICA
        self.inputs = tf.Variable(init, name="input_vectors", aggregation=aggregation)
        self.outputs = tf.Variable(tf.zeros([vocab_size, dim]), name="output_vectors",
                                   aggregation=aggregation)

    def gradients(self, batch, window, negatives):
        """Closed-form SGNS gradients for a batch of centre tokens.

        Contexts are the batch itself shifted by each offset, so their output vectors
        come from one lookup. A centre's K noise words stand for the K noise words of
        each of its pairs: their terms are weighted by the centre's number of contexts,
        which keeps the expected gradient of word2vec's per-pair sampling.

        Returns:
          (loss summed over pairs, number of pairs, IndexedSlices for inputs,
          IndexedSlices for outputs).
        """
        ids, negs = batch["ids"], batch["negatives"]
        v = tf.gather(self.inputs, ids)  # [N, d] centre vectors
        c = tf.gather(self.outputs, ids)  # [N, d] the same tokens as contexts
        u = tf.gather(self.outputs, negs)  # [N, K, d] noise vectors
        grad_v, grad_c = tf.zeros_like(v), tf.zeros_like(c)
        n_ctx = tf.zeros_like(v[:, 0])
        loss = tf.constant(0.0)
        for o, mask in zip(offsets(window), context_masks(batch["rows"], batch["radius"], window)):
            m = tf.cast(mask, tf.float32)
            context = shift(c, o)
            logit = tf.reduce_sum(v * context, axis=1)
            g = (tf.sigmoid(logit) - 1.0) * m  # d loss / d logit of the positive pair
            loss += tf.reduce_sum(tf.nn.softplus(-logit) * m)
            grad_v += g[:, None] * context
            grad_c += shift(g[:, None] * v, -o)
            n_ctx += m
        noise_logit = tf.einsum("nd,nkd->nk", v, u)
        # Each of the M drawn noise words stands for negatives / M of every pair's draws.
        weight = n_ctx[:, None] * (negatives / tf.cast(tf.shape(negs)[1], tf.float32))
        g_noise = tf.sigmoid(noise_logit) * weight
        loss += tf.reduce_sum(tf.nn.softplus(noise_logit) * weight)
        grad_v += tf.einsum("nk,nkd->nd", g_noise, u)
        grad_u = g_noise[:, :, None] * v[:, None, :]
        dim = tf.shape(v)[1]
        return (loss, tf.reduce_sum(n_ctx),
                tf.IndexedSlices(grad_v, ids),
                tf.IndexedSlices(tf.concat([grad_c, tf.reshape(grad_u, [-1, dim])], 0),
                                 tf.concat([ids, tf.reshape(negs, [-1])], 0)))


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
    """
    vocab = "".join(f"{w}\t{c}\n" for w, c in zip(corpus.vocab, corpus.counts.tolist()))
    return {
        "corpus": {"directory": corpus.directory,
                   "inputs_fingerprint": corpus.info.get("inputs", {}).get("fingerprint"),
                   "vocab_sha256": hashlib.sha256(vocab.encode("utf-8")).hexdigest(),
                   "vocab_size": len(corpus.vocab)},
        "parameters": {"dim": config.dim, "seed": config.seed, "epochs": config.epochs,
                       "negatives": config.negatives, "learning_rate": config.learning_rate,
                       **config.effective(corpus, kernel)},
    }


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
        old = recorded.get("parameters", {}).get(name)
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

    def __init__(self, vocab_size, dim, seed):
        first = tf.VariableAggregation.ONLY_FIRST_REPLICA
        self.model = SkipGram(vocab_size, dim, seed)
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

    def finite(self):
        """Whether every input and output vector is finite (one pass over both tables)."""
        return all(bool(tf.reduce_all(tf.math.is_finite(v))) for v in (self.model.inputs, self.model.outputs))


def diverged_error(config, ckpt_dir, what):
    """The error of a run whose loss or vectors stopped being finite."""
    rate = config.learning_rate
    return ValueError(
        f"training diverged: {what}. The learning rate is the likely cause: --learning-rate {rate:g} "
        f"is too high for this corpus. Train again with a lower one, such as --learning-rate "
        f"{rate / 10:g} (with the tf kernel a smaller --batch-size helps too), after deleting "
        f"{ckpt_dir}: its checkpoints hold the diverging run. Nothing was published.")


def make_fused_step(state, config, corpus, total_words, loss_every=_LOSS_EVERY):
    """The step of the fused kernel: every pair updates the vectors in place (one replica)."""
    from trainer import kernels  # pylint: disable=import-outside-toplevel

    model = state.model
    noise_prob, noise_alias = (tf.constant(t) for t in kernels.alias_table(corpus.counts ** 0.75))
    seed_base = tf.constant(np.int64(config.seed) << 32, tf.int64)

    def fused_step(batch):
        lr = state.learning_rate(config.learning_rate, total_words)
        # The loss costs a logarithm per update: it is measured on one step in loss_every.
        with_loss = tf.equal(state.step % loss_every, 0)
        loss, pairs = kernels.skipgram_step(
            model.inputs, model.outputs, batch["ids"], batch["rows"], batch["radius"], noise_prob,
            noise_alias, lr, seed_base + state.step, with_loss, config.negatives)
        state.advance(batch["words"])
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


def apply_summed(model, ctx, lr, grad_in, grad_out, scalars):
    """Applies the sum of every replica's gradients on every replica.

    All-reduce of IndexedSlices fails in TF 2.21's collective ops ("destinations can not
    be empty"), so replicas sum dense gradients: vocab x dim floats a step. An all-gather
    of the sparse rows would move less over a network.

    Returns:
      `scalars`, each summed over the replicas.
    """
    vocab_size = tf.shape(model.inputs)[0]
    dense_in = tf.math.unsorted_segment_sum(grad_in.values, grad_in.indices, vocab_size)
    dense_out = tf.math.unsorted_segment_sum(grad_out.values, grad_out.indices, vocab_size)
    dense_in, dense_out, *scalars = ctx.all_reduce(tf.distribute.ReduceOp.SUM,
                                                   [dense_in, dense_out, *scalars])
    model.inputs.assign_sub(lr * dense_in)
    model.outputs.assign_sub(lr * dense_out)
    return scalars


def make_tf_step(state, config, total_words, window, device):
    """The replica step of the tf kernel: closed-form gradients, sparse updates."""
    model, negatives = state.model, float(config.negatives)

    def tf_step(batch):
        lr = state.learning_rate(config.learning_rate, total_words)
        loss, pairs, grad_in, grad_out = model.gradients(batch, window, negatives)
        ctx = tf.distribute.get_replica_context()
        words = tf.identity(batch["words"])  # placed on the step device (see step_device)
        if ctx.num_replicas_in_sync > 1:
            words, loss, pairs = apply_summed(model, ctx, lr, grad_in, grad_out, [words, loss, pairs])
        else:
            model.inputs.scatter_sub(tf.IndexedSlices(lr * grad_in.values, grad_in.indices))
            model.outputs.scatter_sub(tf.IndexedSlices(lr * grad_out.values, grad_out.indices))
        state.advance(words)
        return loss, lr, pairs, pairs

    if device is None:
        return tf_step

    def pinned_step(batch):
        with tf.device(device):
            return tf_step(batch)

    return pinned_step


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

    def run(self):
        for epoch in range(int(self.state.epoch.numpy()), self.config.epochs):
            if self.run_epoch(epoch):
                return  # --max-steps reached
            self.state.epoch.assign(epoch + 1)
            self.state.batches_in_epoch.assign(0)
            self.save(int(self.state.step.numpy()))
            logging.info("train: epoch %d done", epoch + 1)

    def batches(self, epoch):
        """The epoch's distributed batches, past those a resumed run already trained."""
        per_replica = max(1, self.batch_size // self.strategy.num_replicas_in_sync)
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
                self.save(before + done)
                raise main.Terminated(
                    f"stopped by SIGTERM at step {before + done}; checkpoint saved in "
                    f"{self.manager.directory}: the same command resumes from it")

    def stop_agreed(self):
        """True when SIGTERM reached this process, or, with several workers, any of them:
        every worker then saves and stops at the same step."""
        local = 1.0 if main.stop_requested() else 0.0
        if not isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return local > 0
        per_replica = self.strategy.run(tf.identity, args=(tf.constant(local),))
        return float(self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)) > 0

    def save(self, step):
        """Checkpoints, unless the vectors stopped being finite (then raises)."""
        if not self.state.finite():
            raise self.diverged(f"the vectors hold NaN or infinite values at step {step}")
        self.manager.save(checkpoint_number=step)

    def diverged(self, what):
        return diverged_error(self.config, self.manager.directory, what)


def train(config):
    """Trains and returns (WordVectors, training stats, Corpus). Resumes from checkpoints.

    Raises:
      ValueError: the checkpoints beside the output belong to another run; a window
        shard is damaged; training diverged (a loss or vectors not finite).
    """
    from trainer.vectors import WordVectors  # pylint: disable=import-outside-toplevel

    corpus = load_corpus(config.corpus)
    strategy = choose_strategy(config.strategy, config.tpu)
    kernel = resolve_kernel(config.kernel, strategy)
    effective = config.effective(corpus, kernel)
    logging.info("train: %d words in vocabulary, %d corpus words, strategy %s with %d replica(s), "
                 "%s kernel, %d tokens a step", len(corpus.vocab), corpus.total_words,
                 type(strategy).__name__, strategy.num_replicas_in_sync, kernel, effective["batch_size"])
    with strategy.scope():
        state = TrainState(len(corpus.vocab), config.dim, config.seed)
    if config.init_from:
        warm_start(state.model, corpus.vocab, config.init_from)  # a checkpoint, if any, wins below
    ckpt_dir = checkpoint_dir(config.output, strategy)
    manager = restore_or_start(state, ckpt_dir, run_fingerprint(config, corpus, kernel))
    total_words = float(config.epochs) * corpus.total_words
    # A short training (the bundled sample: ~200 steps) still gets _CURVE_POINTS points of
    # loss: fewer steps a call, the loss measured on more of them.
    expected_steps = max(1, int(total_words / effective["batch_size"]))
    steps_per_call = max(1, min(100, expected_steps // (2 * _CURVE_POINTS)))
    if kernel == "fused":
        loss_every = max(1, min(_LOSS_EVERY, expected_steps // (4 * _CURVE_POINTS)))
        replica_step = make_fused_step(state, config, corpus, total_words, loss_every)
    else:
        replica_step = make_tf_step(state, config, total_words, effective["window"], step_device(strategy))
    meter = Meter(outputs.join(ckpt_dir, schema.LOGS_DIR), total_words, state.words_done)
    loop = EpochLoop(config, corpus, strategy, kernel, effective["batch_size"], state, manager,
                     make_train_steps(strategy, replica_step), meter, steps_per_call)
    try:
        with main.cooperating():
            loop.run()
    except tf.errors.DataLossError as error:
        raise damaged_shard_error(corpus, error) from None
    if not state.finite():
        raise loop.diverged("the vectors hold NaN or infinite values at the end of training")
    stats = meter.finish(state.words_done, strategy=type(strategy).__name__,
                         replicas=strategy.num_replicas_in_sync, kernel=kernel,
                         batch_size=effective["batch_size"], chief=is_chief(strategy))
    return WordVectors(corpus.vocab, state.model.inputs.numpy(), corpus.counts), stats, corpus


# ------------------------------------------------------------------------ exports


class EmbeddingServer(tf.Module):
    """Raw strings -> token ids through the corpus transform_fn -> vectors."""

    def __init__(self, transform_output_dir, vectors):
        super().__init__()
        self.tft_layer, _ = tokens.transform_layer(transform_output_dir)
        self.table = tf.Variable(np.concatenate([vectors, np.zeros((1, vectors.shape[1]), np.float32)]),
                                 trainable=False, name="vectors_with_oov_row")
        self.vocab_size = vectors.shape[0]

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=schema.SERVING_INPUT)])
    def serve(self, text):
        padded = tokens.ragged_ids(self.tft_layer, text).to_tensor(default_value=-1)
        mask = tf.logical_and(padded >= 0, padded < self.vocab_size)
        safe = tf.where(mask, padded, tf.cast(self.vocab_size, tf.int64))
        vecs = tf.gather(self.table, safe) * tf.cast(mask, tf.float32)[:, :, None]
        count = tf.reduce_sum(tf.cast(mask, tf.float32), axis=1, keepdims=True)
        mean = tf.reduce_sum(vecs, axis=1) / tf.maximum(count, 1.0)
        return {schema.SERVING_VECTORS: vecs, schema.SERVING_MASK: mask, schema.SERVING_MEAN: mean,
                schema.SERVING_TOKEN_IDS: padded}


def export(vectors, corpus_dir, out_dir):
    """Writes every export of the embeddings into `out_dir`."""
    vectors.save(out_dir)
    vectors.save_word2vec_format(outputs.join(out_dir, schema.WORD2VEC_TXT))
    if not outputs.is_remote(out_dir):
        os.makedirs(os.path.join(out_dir, "projector"), exist_ok=True)
    outputs.write_text(outputs.join(out_dir, schema.PROJECTOR_VECTORS_TSV),
                         "".join("\t".join(f"{x:.6g}" for x in row) + "\n" for row in vectors.vectors))
    outputs.write_text(outputs.join(out_dir, schema.PROJECTOR_METADATA_TSV),
                         "word\tcount\n" + "".join(f"{w}\t{c}\n" for w, c in zip(vectors.index_to_key,
                                                                                 vectors.counts)))
    server = EmbeddingServer(corpus_dir, vectors.vectors)
    tf.saved_model.save(server, outputs.join(out_dir, schema.SAVED_MODEL_DIR),
                        signatures={"serving_default": server.serve})
