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
"""

import dataclasses
import logging
import os
import time

import numpy as np
import tensorflow as tf

from core import outputs, tokens
from schemas import corpus as corpus_schema
from schemas import embeddings as schema

STRATEGIES = ("auto", "cpu", "mirrored", "multiworker", "tpu")
KERNELS = ("auto", "fused", "tf")
DEFAULT_BATCH = {"fused": 16384, "tf": 1024}  # centre tokens per step, by kernel
_MIN_LR_RATIO = 1e-4
_LOSS_EVERY = 8  # the fused kernel measures the loss on one step in this many


@dataclasses.dataclass
class TrainConfig:
    """Parameters of one training run (defaults follow word2vec's)."""

    corpus: str
    output: str
    dim: int = 100
    epochs: int = 5
    negatives: int = 5  # noise words per (centre, context) pair, as word2vec's -negative
    noise_per_centre: int | None = None  # noise words drawn per centre; None: 3 x negatives
    learning_rate: float = 0.025
    batch_size: int | None = None  # centre tokens per step over all replicas; None: by kernel
    # (DEFAULT_BATCH). The tf kernel sums a batch's updates, and larger batches sum so many
    # updates of frequent words that training diverges (4096 does on Wikipedia); the fused
    # kernel applies every pair's update at once, so its batch size only sets the overhead.
    kernel: str = "auto"  # fused (C++ op, CPU, one replica) | tf (TensorFlow ops, any device)
    window: int | None = None  # None: the corpus job's --window
    sample: float | None = None  # None: the corpus job's --sample
    strategy: str = "auto"
    tpu: str | None = None
    seed: int = 1
    checkpoint_every_steps: int = 2000
    log_every_seconds: float = 10.0
    records_per_read: int = 64
    max_steps: int | None = None  # stop early (tests, profiling)
    init_from: str | None = None  # embeddings output whose vectors start the shared words

    def validate(self):
        checks = [
            (self.dim >= 1, f"--dim must be >= 1, got {self.dim}"),
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (self.negatives >= 1, f"--negatives must be >= 1, got {self.negatives}"),
            (self.noise_per_centre is None or self.noise_per_centre >= 1,
             f"--noise-per-centre must be >= 1, got {self.noise_per_centre}"),
            (self.learning_rate > 0, f"--learning-rate must be > 0, got {self.learning_rate}"),
            (self.batch_size is None or self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.kernel in KERNELS, f"--kernel must be one of {KERNELS}, got {self.kernel!r}"),
            (self.window is None or self.window >= 1, f"--window must be >= 1, got {self.window}"),
            (self.sample is None or 0 <= self.sample < 1, f"--sample must be in [0, 1), got {self.sample}"),
            (self.strategy in STRATEGIES, f"--strategy must be one of {STRATEGIES}, got {self.strategy!r}"),
            (self.strategy != "tpu" or self.tpu, "--strategy tpu needs --tpu ADDRESS"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        outputs.check_output_path(self.output)
        outputs.check_not_an_input(self.output, "--output", [self.corpus, self.init_from])


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
    info = outputs.require_completed(directory, "--corpus", "embedflow corpus --input GLOB --output DIR")
    if info.get("job") != "corpus":
        raise ValueError(f"--corpus {directory} is the output of `{info.get('job')}`, not of the corpus job")
    text = outputs.read_text(outputs.join(directory, corpus_schema.VOCAB_FILE))
    rows = [line.split("\t") for line in text.splitlines()]
    files = sorted(tf.io.gfile.glob(outputs.join(directory, corpus_schema.WINDOWS_DIR, "*")))
    if not files:
        raise FileNotFoundError(f"--corpus {directory} holds no window files")
    return Corpus(directory, [r[0] for r in rows], np.array([int(r[1]) for r in rows], dtype=np.int64),
                  files, info["parameters"]["window"], info["parameters"]["sample"], info)


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
    negatives, vocab_size, per_read = noise_count(config), len(corpus.vocab), config.records_per_read
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


def _progress_words(config, corpus):
    return float(config.epochs) * corpus.total_words


def train(config):
    """Trains and returns (WordVectors, training stats). Resumes from checkpoints."""
    from trainer.vectors import WordVectors  # pylint: disable=import-outside-toplevel

    corpus = load_corpus(config.corpus)
    strategy = choose_strategy(config.strategy, config.tpu)
    replicas = strategy.num_replicas_in_sync
    kernel = resolve_kernel(config.kernel, strategy)
    batch_size = config.batch_size or DEFAULT_BATCH[kernel]
    logging.info("train: %d words in vocabulary, %d corpus words, strategy %s with %d replica(s), "
                 "%s kernel, %d tokens a step", len(corpus.vocab), corpus.total_words,
                 type(strategy).__name__, replicas, kernel, batch_size)
    total_words = _progress_words(config, corpus)
    lr0 = config.learning_rate
    window = config.window if config.window is not None else corpus.window

    with strategy.scope():
        model = SkipGram(len(corpus.vocab), config.dim, config.seed)
        words_done = tf.Variable(0.0, dtype=tf.float64, name="words_done",
                                 aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        step = tf.Variable(0, dtype=tf.int64, name="step",
                           aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        epoch_var = tf.Variable(0, dtype=tf.int64, name="epoch",
                                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        batches_in_epoch = tf.Variable(0, dtype=tf.int64, name="batches_in_epoch",
                                       aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

    if config.init_from:
        warm_start(model, corpus.vocab, config.init_from)  # a checkpoint, if any, wins below
    chief = is_chief(strategy)
    ckpt_dir = checkpoint_dir(config.output, strategy)
    checkpoint = tf.train.Checkpoint(model=model, words_done=words_done, step=step, epoch=epoch_var,
                                     batches_in_epoch=batches_in_epoch)
    manager = tf.train.CheckpointManager(checkpoint, ckpt_dir, max_to_keep=2)
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint)
        logging.info("train: resumed from %s (epoch %d, step %d)", manager.latest_checkpoint,
                     int(epoch_var.numpy()), int(step.numpy()))

    # With one device per worker (MultiWorkerMirroredStrategy on CPU) the values handed
    # to the cross-worker all-reduce must carry a device, or TF 2.21 refuses them
    # ("destinations can not be empty"): pin the step to the worker's device.
    step_device = None
    if replicas > 1 and len(strategy.extended.worker_devices) == 1:
        step_device = strategy.extended.worker_devices[0]

    if kernel == "fused":
        from trainer import kernels  # pylint: disable=import-outside-toplevel

        noise_prob, noise_alias = (tf.constant(t) for t in kernels.alias_table(corpus.counts ** 0.75))
        seed_base = tf.constant(np.int64(config.seed) << 32, tf.int64)

    def fused_step(batch):
        """One batch through the fused kernel: every pair updates the vectors in place."""
        progress = tf.cast(words_done, tf.float32) / total_words
        lr = lr0 * tf.maximum(1.0 - progress, _MIN_LR_RATIO)
        # The loss costs a logarithm per update: it is measured on one step in _LOSS_EVERY.
        with_loss = tf.equal(step % _LOSS_EVERY, 0)
        loss, pairs = kernels.skipgram_step(
            model.inputs, model.outputs, batch["ids"], batch["rows"], batch["radius"], noise_prob,
            noise_alias, lr, seed_base + step, with_loss, config.negatives)
        words_done.assign_add(tf.cast(batch["words"], tf.float64))
        step.assign_add(1)
        batches_in_epoch.assign_add(1)
        return loss, lr, pairs, tf.where(with_loss, pairs, 0.0)

    def replica_step(batch):
        if kernel == "fused":
            return fused_step(batch)
        if step_device is None:
            return _replica_step(batch)
        with tf.device(step_device):
            return _replica_step(batch)

    def _replica_step(batch):
        progress = tf.cast(words_done, tf.float32) / total_words
        lr = lr0 * tf.maximum(1.0 - progress, _MIN_LR_RATIO)
        loss, pairs, grad_in, grad_out = model.gradients(batch, window, float(config.negatives))
        ctx = tf.distribute.get_replica_context()
        words = tf.identity(batch["words"])  # placed on the step device (see step_device)
        if ctx.num_replicas_in_sync > 1:
            # All-reduce of IndexedSlices fails in TF 2.21's collective ops ("destinations
            # can not be empty"), so replicas sum dense gradients: vocab x dim floats a
            # step. An all-gather of the sparse rows would move less over a network.
            vocab_size = tf.shape(model.inputs)[0]
            dense_in = tf.math.unsorted_segment_sum(grad_in.values, grad_in.indices, vocab_size)
            dense_out = tf.math.unsorted_segment_sum(grad_out.values, grad_out.indices, vocab_size)
            dense_in, dense_out, words, loss, pairs = ctx.all_reduce(
                tf.distribute.ReduceOp.SUM, [dense_in, dense_out, words, loss, pairs])
            model.inputs.assign_sub(lr * dense_in)
            model.outputs.assign_sub(lr * dense_out)
        else:
            model.inputs.scatter_sub(tf.IndexedSlices(lr * grad_in.values, grad_in.indices))
            model.outputs.scatter_sub(tf.IndexedSlices(lr * grad_out.values, grad_out.indices))
        words_done.assign_add(tf.cast(words, tf.float64))
        step.assign_add(1)
        batches_in_epoch.assign_add(1)
        return loss, lr, pairs, pairs

    @tf.function
    def train_steps(iterator, n):
        """Runs up to n steps; returns (loss sum, pairs, pairs the loss was measured on,
        last lr, steps run)."""
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

    writer = tf.summary.create_file_writer(outputs.join(ckpt_dir, schema.LOGS_DIR))
    stats = {"steps": 0, "pairs": 0.0, "seconds": 0.0, "loss_curve": []}
    words_at_start = float(words_done.numpy())
    train_start = time.time()
    last_log, pairs_since, loss_sum, loss_pairs = time.time(), 0.0, 0.0, 0.0
    words_at_log = words_at_start
    steps_per_call = max(1, min(100, config.checkpoint_every_steps))
    stop = False

    for epoch in range(int(epoch_var.numpy()), config.epochs):
        per_replica_batch = max(1, batch_size // replicas)
        dataset_fn = lambda ctx, e=epoch: make_dataset(corpus, config, e, ctx, per_replica_batch,  # noqa: E731
                                                       noise=kernel == "tf")
        iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
        for _ in range(int(batches_in_epoch.numpy())):  # resuming: the same draws, skip them
            next(iterator)
        while True:
            n = steps_per_call
            if config.max_steps is not None:
                n = min(n, config.max_steps - int(step.numpy()))
                if n <= 0:
                    stop = True
                    break
            before = int(step.numpy())
            loss, pairs, measured, lr, done = train_steps(iterator, tf.constant(n))
            done = int(done)
            if done == 0:
                break
            pairs = float(pairs)
            pairs_since += pairs
            loss_sum += float(loss)
            loss_pairs += float(measured)
            stats["steps"] += done
            stats["pairs"] += pairs
            current = before + done
            if current // config.checkpoint_every_steps > before // config.checkpoint_every_steps:
                manager.save(checkpoint_number=current)
            now = time.time()
            if now - last_log >= config.log_every_seconds:
                words_now = float(words_done.numpy())
                wps = (words_now - words_at_log) / (now - last_log)
                mean_loss = loss_sum / loss_pairs if loss_pairs else float("nan")
                logging.info("train: epoch %d step %d  %.1f%%  loss/pair %.4f  lr %.5f  %.0f words/s  %.0f pairs/s",
                             epoch + 1, current, 100 * words_now / total_words, mean_loss, float(lr), wps,
                             pairs_since / (now - last_log))
                with writer.as_default(step=current):
                    tf.summary.scalar("loss_per_pair", mean_loss)
                    tf.summary.scalar("learning_rate", float(lr))
                    tf.summary.scalar("words_per_second", wps)
                stats["loss_curve"].append([current, round(words_now / total_words, 4), mean_loss])
                last_log, pairs_since, loss_sum, loss_pairs, words_at_log = now, 0.0, 0.0, 0.0, words_now
        if stop:
            break
        epoch_var.assign(epoch + 1)
        batches_in_epoch.assign(0)
        manager.save(checkpoint_number=int(step.numpy()))
        logging.info("train: epoch %d done", epoch + 1)

    stats["seconds"] = time.time() - train_start
    stats["words"] = float(words_done.numpy()) - words_at_start
    stats["words_per_second"] = stats["words"] / max(stats["seconds"], 1e-9)
    stats["strategy"] = type(strategy).__name__
    stats["replicas"] = replicas
    stats["kernel"] = kernel
    stats["batch_size"] = batch_size
    writer.flush()
    vectors = WordVectors(corpus.vocab, model.inputs.numpy(), corpus.counts)
    stats["chief"] = chief
    return vectors, stats, corpus


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


# --------------------------------------------------------------------------- CLI
