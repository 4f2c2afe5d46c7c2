"""Keeping the trainer's replicas together: what they exchange, when, and its size.

Two schemes, one per kernel (the kernels themselves: `trainer/skipgram.py`). Sizes are
payload bytes each replica puts into a collective, summed over the replicas (a ring
all-reduce moves about twice that over the network).

**tf kernel, several replicas** (MirroredStrategy, MultiWorkerMirroredStrategy,
TPUStrategy): every replica holds a copy of both tables, equal at the start of every
update. An update's change is sparse and low-rank, so instead of its rows the replicas
all-gather its *factors* (`gather_factors`), fixed-size and padded (TF 2.21's
collectives refuse IndexedSlices, and fixed sizes compile with XLA); per centre token:

    id (int32), M noise ids (int32), number of contexts, input-row gradient (d floats),
    its curvature, 2W context coefficients, M noise coefficients

Each replica then rebuilds every output-row gradient and curvature from those
coefficients and the centres' input rows, which it reads from its own copy (equal
everywhere), and applies all replicas' updates in the same order, so the copies stay
bit-identical. That is (d + 2W + 2M + 3) x 4 bytes a centre token: 692 at d = 100,
W = 5, M = 30 (the default), about 540 a trained word on Wikipedia (subsampling keeps some
3 tokens in 4), whatever the vocabulary, against 2 x V x d x 4 bytes a replica every
1,024-token step before (both dense tables all-reduced: about 92 KB a word at V = 76k,
1.14 MB on a synthetic text of V = 1M words, where the factors measured 506 bytes a
word).

**fused kernel, several workers** (MultiWorkerMirroredStrategy, one CPU replica per
worker): the C++ kernel updates one process's tables in place, pair by pair, so each
worker trains its own copy on its share of the shards and, every `--sync-every-words`
words it trained (a round), the workers add up their changes (`TableSync`): each
worker's change of a table since the last exchange, summed over the workers, is added
to that last exchanged state, which every worker then holds. A row only one worker
touched gets exactly that worker's updates, as with word2vec's lock-free threads in one
process; averaging the tables instead would halve them (on 5M words, 3 epochs: 3.4
analogy points lower). The rows of the HOT_ROWS most frequent words, which every worker moves all the
time, are exchanged HOT_EXCHANGES times a round, the rest once: staleness of frequent
words is what costs quality. Changes travel as float16 (a round's changes are small;
halves the bytes). A round is a number of steps, the same for every worker (a step is
as many tokens on each), so they reach each exchange together. A worker sends
`round_bytes` a round: 2 x V x d x 2 bytes and 3 x 2 x 4096 x d x 2 bytes, 35 MB at
V = 76k, d = 100, which is 22 bytes per trained word at the default 1.6M words a round.
It grows with the vocabulary (253 bytes a word at V = 1M), unless the round does.
Sending only the rows a worker changed since the last full exchange (each with its id)
would not save much, because noise words reach most rows within a round: measured over
an epoch with 2 workers (benchmarks.scale, which counts the changed rows at every full
exchange), 26 bytes a word sent against 23 for changed rows only at V = 76k (enwiki-AA),
270 against 214 at V = 1M (a synthetic Zipf text). Either grows with the vocabulary
until a round touches every row; the tf kernel's factors (about 540 bytes a word,
whatever the vocabulary) cost less only beyond about 2M words. At most MAX_FUSED_WORKERS
workers (more diverge: see there), which start at --worker-rate-scale (1.2) times the
learning rate: a worker that trains without the others' changes learns less a word than
one process (trainer/skipgram.py DEFAULT_WORKER_RATE_SCALE). The full exchange
carries the words trained, whether each worker has finished its epoch, SIGTERM,
divergence and the chief's step, so the workers agree on the learning rate, on when an
epoch ends and on when to checkpoint or stop.
"""

import time

import tensorflow as tf

FLOAT_BYTES = 4
DELTA_BYTES = 2  # the fused kernel's workers send their changes as float16
HOT_ROWS = 4096  # rows of the most frequent words, exchanged more often by the fused kernel's workers
# Exchanges of those rows a round (the last one is the round's full exchange). Measured on
# 4.8M words of enwiki-AA, 5 epochs, 2 workers of 1 thread against one process of 2 threads
# (benchmarks.scale): with 16, 0.78-1.0x the one process's words/s, analogy 18.9% against
# 19.0-19.4%, WordSim-353 0.570 against 0.562-0.568; with 4, 1.0-1.2x, 18.8%, 0.554. Every
# exchange is a barrier the two workers wait at for each other.
HOT_EXCHANGES = 4
# Most fused-kernel workers a run takes (skipgram.resolve_kernel refuses more). Measured
# with 4 workers of 1 thread (4.8M words of enwiki-AA, 5 epochs, seed 4): diverged at
# learning rates 0.025 and 0.03, and at 0.025 with rounds of 400k words (sooner);
# analogy 0.02% at 0.005 and 0.0125. Merging instead by the average (7.6%), by half the
# sum (11.4%), the average for the 4,096 most frequent rows and the sum for the rest
# (6.5%) or the average for the top 256 (0.6%) all fell far below 2 workers' 18.5% on the
# same seed. Likely cause: each worker moves the most frequent words' rows nearly to
# where its own share of the text pulls them between two exchanges, even within one
# step, so the sum of W such moves lands about W times as far (with 2, that sum scaled
# by 1.25 already collapsed training: README).
MAX_FUSED_WORKERS = 2
# The agreed values of a fused-kernel exchange, summed over workers (TableSync.exchange).
SYNC_FLAGS = ("finished", "stop", "max_steps", "diverged", "chief_step", "words", "rows_changed")


def payload_bytes(tensors):
    """Bytes of tensors of static shapes: what a replica puts into a collective."""
    return sum(t.shape.num_elements() * t.dtype.size for t in tensors)


def change_bytes(rows, dim):
    """Bytes of the float16 changes of `rows` rows of both tables: what a fused-kernel
    worker sends in one exchange (with `rows` its vocabulary, or HOT_ROWS)."""
    return 2 * rows * dim * DELTA_BYTES


def round_bytes(vocab_size, dim):
    """Bytes a fused-kernel worker sends in a round: one full exchange with the agreed
    values, and HOT_EXCHANGES - 1 exchanges of the hot rows."""
    return (change_bytes(vocab_size, dim) + len(SYNC_FLAGS) * 8
            + (HOT_EXCHANGES - 1) * change_bytes(min(HOT_ROWS, vocab_size), dim))


def dense_table_bytes(vocab_size, dim):
    """Bytes of both tables as float32: what each replica of the tf kernel all-reduced
    every step before its updates were exchanged as factors."""
    return 2 * vocab_size * dim * FLOAT_BYTES


def gather_factors(ctx, factors, scalars=()):
    """Every replica's factors, concatenated in replica order (the same on every replica).

    Args:
      ctx: the replica context.
      factors: dict of tensors (trainer/skipgram.py sgns_factors).
      scalars: float32 scalars to sum over the replicas, carried by the same collective.

    Returns:
      (the gathered factors, the summed scalars, the bytes this replica sent).
    """
    names = sorted(factors)
    sent = [factors[n] for n in names] + [tf.stack(list(scalars) or [0.0])]
    gathered = ctx.all_gather(sent, axis=0)
    sums = tf.reduce_sum(tf.reshape(gathered[-1], [-1, max(len(scalars), 1)]), axis=0)
    return dict(zip(names, gathered)), [sums[i] for i in range(len(scalars))], payload_bytes(sent)


class TableSync:
    """Workers training their own copies of two tables, summing their changes: the rows of
    the HOT_ROWS most frequent words every 1/HOT_EXCHANGES of a round, all rows once a
    round (see the module docstring).

    Made after the tables are restored or warm-started (their state then is the last
    exchanged one). Exchanges are collectives: every worker calls them as many times, in
    the same order, which the loop guarantees by running HOT_EXCHANGES - 1 hot exchanges
    and one full exchange a round, trained or not.
    """

    def __init__(self, strategy, tables, words_done, workers, device=None):
        self.strategy, self.tables, self.workers, self.device = strategy, list(tables), workers, device
        self.words_done = words_done
        self.base = [tf.Variable(t, trainable=False, name=f"exchanged_{i}") for i, t in enumerate(tables)]
        self.words_synced = tf.Variable(words_done, trainable=False, dtype=tf.float64)
        self.since = tf.Variable(0.0, trainable=False, dtype=tf.float64, name="words_since_exchange")
        self.hot_rows = min(HOT_ROWS, int(tables[0].shape[0]))
        self.exchanges = self.hot_exchanges = 0
        self.seconds = 0.0  # waiting for and running exchanges
        # Rows of both tables that changed between two full exchanges, summed over the
        # workers and the full exchanges: what an exchange of changed rows only would send.
        self.touched_rows = 0
        self._exchange = tf.function(self._exchange_all)
        self._exchange_hot = tf.function(self._exchange_rows)

    def bytes_per_exchange(self, hot=False):
        """Payload bytes of one exchange, full or hot, summed over the workers."""
        rows = self.hot_rows if hot else int(self.tables[0].shape[0])
        return self.workers * (change_bytes(rows, int(self.tables[0].shape[1])) + (0 if hot else len(SYNC_FLAGS) * 8))

    def bytes_exchanged(self):
        return self.exchanges * self.bytes_per_exchange() + self.hot_exchanges * self.bytes_per_exchange(hot=True)

    def touched_bytes(self):
        """What the same exchanges would have sent had the full ones carried only the rows a
        worker changed since the last (each row its id and its float16 change), measured."""
        dim = int(self.tables[0].shape[1])
        return (self.touched_rows * (4 + dim * DELTA_BYTES) + self.exchanges * self.workers * len(SYNC_FLAGS) * 8
                + self.hot_exchanges * self.bytes_per_exchange(hot=True))

    def count(self, words):
        """Counts a local step's words; returns the global estimate to advance the schedule
        by (every worker is assumed to train as fast until the next exchange says)."""
        words = tf.cast(words, tf.float64)
        self.since.assign_add(words)
        return words * self.workers

    def _sum_changes(self, ctx, rows=None):
        """Rows [0, rows) (all: None) of every table become their last exchanged state plus
        every worker's change since, sent as float16 (the changes of a round are small).

        Some rows are read by gather and written by scatter, in place: a read of the whole
        variable still alive when it is written would make TensorFlow copy all of it.

        Returns:
          for all rows, the number of rows of both tables this worker changed (int64).
        """
        if rows is None:
            deltas = [tf.cast(t - b, tf.float16) for t, b in zip(self.tables, self.base)]
            changed = tf.add_n([tf.math.count_nonzero(tf.reduce_any(d != 0, axis=1)) for d in deltas])
            sums = ctx.all_reduce(tf.distribute.ReduceOp.SUM, deltas)
            for table, base, total in zip(self.tables, self.base, sums):
                base.assign_add(tf.cast(total, tf.float32))
                table.assign(base.read_value())
            return changed
        ids = tf.range(rows)

        def read(variable):
            return tf.raw_ops.ResourceGather(resource=variable.handle, indices=ids, dtype=tf.float32)

        bases = [read(b) for b in self.base]
        deltas = [tf.cast(read(t) - b, tf.float16) for t, b in zip(self.tables, bases)]
        sums = ctx.all_reduce(tf.distribute.ReduceOp.SUM, deltas)
        for table, base, before, total in zip(self.tables, self.base, bases, sums):
            state = before + tf.cast(total, tf.float32)
            tf.raw_ops.ResourceScatterUpdate(resource=base.handle, indices=ids, updates=state)
            tf.raw_ops.ResourceScatterUpdate(resource=table.handle, indices=ids, updates=state)

    def _exchange_rows(self):
        def replica():
            with tf.device(self.device):
                self._sum_changes(tf.distribute.get_replica_context(), self.hot_rows)
                return tf.constant(0.0)

        return self.strategy.run(replica)

    def _exchange_all(self, flags):
        def replica(flags):
            with tf.device(self.device):
                ctx = tf.distribute.get_replica_context()
                changed = self._sum_changes(ctx)
                # Its own collective: an all-reduce packs its tensors together, of one dtype.
                agreed = ctx.all_reduce(tf.distribute.ReduceOp.SUM,
                                        tf.concat([flags, [self.since.read_value(),
                                                           tf.cast(changed, tf.float64)]], 0))
                self.words_synced.assign_add(agreed[-2])
                self.words_done.assign(self.words_synced)
                self.since.assign(0.0)
                return agreed

        return self.strategy.run(replica, args=(flags,))

    def exchange_hot(self):
        """Sums every worker's changes of the most frequent words' rows into every worker's."""
        started = time.perf_counter()
        self._exchange_hot()
        self.hot_exchanges += 1
        self.seconds += time.perf_counter() - started

    def exchange(self, *, finished, stop, max_steps, diverged, chief_step):
        """Sums every worker's changes into every worker's tables; returns the agreed values.

        Returns:
          dict over SYNC_FLAGS: the number of workers that finished their epoch, were asked
          to stop, reached --max-steps, saw a loss that is not finite; the chief's step;
          the words all workers trained since the last exchange; the rows of both tables
          they changed since (each worker's counted).
        """
        flags = tf.constant([float(finished), float(stop), float(max_steps), float(diverged),
                             float(chief_step)], tf.float64)
        started = time.perf_counter()
        agreed = self.strategy.experimental_local_results(self._exchange(flags))[0].numpy()
        self.exchanges += 1
        self.seconds += time.perf_counter() - started
        agreed = dict(zip(SYNC_FLAGS, agreed.tolist()))
        self.touched_rows += int(agreed["rows_changed"])
        return agreed
