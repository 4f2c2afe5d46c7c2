"""The trainer's fused CPU kernels: build, cache and load them; the noise alias table.

`sgns_cpu.cc` beside this file holds TensorFlow custom ops that train word2vec's and
fastText's models with negative sampling on a batch of tokens, in place, as their C/C++
tools do: skip-gram (`skipgram_step`: by default HogBatch's shared noise words, or
word2vec's exact pair-by-pair update), CBOW (`cbow_step`, word vectors or subwords) and
fastText's subword skip-gram (`subword_skipgram_step`); subword tables come from
`trainer.subwords.ngram_table`; `draw_batch` subsamples a corpus held in memory and draws
the window radii for them. TensorFlow's own ops cannot fuse those loops on the
CPU: every step would materialise the gathered rows and scatter them back.

The ops are compiled on first use with the C++ compiler ($CXX, else g++) against the
headers of the installed TensorFlow (tf.sysconfig), for this machine's processor
(-march=native: AVX-512, AVX2 or plain code paths), and cached under
$EMBEDFLOW_KERNEL_CACHE (default ~/.cache/embedflow/kernels) by a hash of the source,
the compiler flags ($EMBEDFLOW_KERNEL_CXXFLAGS adds some), TensorFlow's version and the
processor's features: a later run, or another machine sharing the cache, only loads it.
The build writes to a temporary file and renames it, so concurrent first runs cannot
load a half-written library.
"""

import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import tempfile

import numpy as np

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sgns_cpu.cc")
CACHE_ENV = "EMBEDFLOW_KERNEL_CACHE"
# Extra compiler flags, after the others (part of the cache key): e.g. "-mno-avx512f" builds
# and tests the AVX2 code path on an AVX-512 machine, "-mno-avx512f -mno-avx2 -mno-fma"
# the plain one.
FLAGS_ENV = "EMBEDFLOW_KERNEL_CXXFLAGS"
_FLAGS = ["-O3", "-march=native", "-fopenmp-simd", "-shared", "-fPIC",
          "-Wno-deprecated-declarations", "-Wno-interference-size"]
# TensorFlow's bundled Eigen does not compile with AVX512-FP16 enabled (g++ 12 on a
# Sapphire Rapids CPU fails in PacketMathFP16.h); the kernel uses no half floats.
_X86_OPT_OUT = ["-mno-avx512fp16"]
_loaded = {}  # library path -> loaded module
_paths = {}  # ($CXX, $EMBEDFLOW_KERNEL_CXXFLAGS, cache folder) -> library path
_flags_by_compiler = {}


def compiler_flags(cxx):
    """_FLAGS plus the opt-outs this compiler understands (probed once per compiler), then
    $EMBEDFLOW_KERNEL_CXXFLAGS."""
    extra_flags = shlex.split(os.environ.get(FLAGS_ENV, ""))
    if shutil.which(cxx) is None:
        return list(_FLAGS) + extra_flags
    if cxx not in _flags_by_compiler:
        extra = []
        if platform.machine() in ("x86_64", "AMD64"):
            for flag in _X86_OPT_OUT:
                probe = subprocess.run([cxx, flag, "-x", "c++", "-fsyntax-only", os.devnull],
                                       capture_output=True, check=False)
                if probe.returncode == 0:
                    extra.append(flag)
        _flags_by_compiler[cxx] = _FLAGS + extra
    return _flags_by_compiler[cxx] + extra_flags


class KernelUnavailable(RuntimeError):
    """The fused kernel cannot be built or loaded here (no compiler, failed build)."""


def _cpu_signature():
    """Processor model and feature flags: a -march=native build is valid for these."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            lines = [line for line in f if line.startswith(("flags", "model name", "Features", "CPU part"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() + platform.machine()


def cache_dir():
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "embedflow", "kernels")


def library_path():
    """Where the built library for this source, TensorFlow and processor lives."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    with open(SOURCE, "rb") as f:
        source = f.read()
    cxx = os.environ.get("CXX", "g++")
    key = hashlib.sha256(b"\0".join([
        source, cxx.encode(), " ".join(compiler_flags(cxx)).encode(), tf.__version__.encode(),
        " ".join(tf.sysconfig.get_compile_flags() + tf.sysconfig.get_link_flags()).encode(),
        _cpu_signature().encode()])).hexdigest()[:20]
    return os.path.join(cache_dir(), f"sgns_cpu-{key}.so")


def build(path):
    """Compiles the kernel into `path` (through a temporary file and a rename)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        raise KernelUnavailable(f"no C++ compiler: {cxx!r} is not on PATH (install g++ or set $CXX)")
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(path))
    except OSError as error:
        raise KernelUnavailable(f"cannot write the kernel cache {os.path.dirname(path)}: {error}; "
                                f"point ${CACHE_ENV} at a writable folder") from error
    os.close(fd)
    cmd = [cxx, *compiler_flags(cxx), SOURCE, "-o", tmp, *tf.sysconfig.get_compile_flags(), *tf.sysconfig.get_link_flags()]
    logging.info("train: building the fused CPU kernel (once per machine): %s", " ".join(cmd))
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise KernelUnavailable(f"building {SOURCE} failed ({cxx} exit {done.returncode}):\n"
                                    + done.stderr[-3000:])
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load():
    """The loaded op module (builds it first if no cached build matches).

    The library's path is found once a process for each $CXX, $EMBEDFLOW_KERNEL_CXXFLAGS
    and cache folder: the ops are called while tf.function traces, where hashing the
    source again would be slow.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    key = (os.environ.get("CXX", "g++"), os.environ.get(FLAGS_ENV, ""), cache_dir())
    if key in _paths:
        return _loaded[_paths[key]]
    path = library_path()
    if path not in _loaded:
        if not os.path.exists(path):
            build(path)
        try:
            _loaded[path] = tf.load_op_library(path)
        except (tf.errors.NotFoundError, OSError) as error:
            raise KernelUnavailable(f"loading {path} failed: {error}; delete it to rebuild") from error
    _paths[key] = path
    return _loaded[path]


def skipgram_step(input_vectors, output_vectors, ids, rows, radius, noise_prob, noise_alias,
                  learning_rate, seed, compute_loss, negatives, shared_negatives=True):
    """Trains skip-gram on one batch in place (EmbedflowSkipgramStep, see sgns_cpu.cc).

    Every (centre, context) pair trains the context's input vector to predict the
    centre's output vector against `negatives` noise words from the alias table.

    Args:
      input_vectors, output_vectors: [V, d] float32 variables.
      ids: int64 [N] consecutive kept tokens; rows: int64 [N] the run of each (pairs never
        cross runs, a negative row pairs with nothing); radius: int32 [N] each centre's
        window radius.
      noise_prob, noise_alias: the alias table of the noise distribution (`alias_table`).
      learning_rate: float32 scalar; seed: int64 scalar (the noise draws follow from it).
      compute_loss: bool scalar; without it the loss output is 0 and the call is cheaper.
      negatives: noise words per pair.
      shared_negatives: True (fast, HogBatch): a centre draws its noise words once for all
        its pairs, and its pairs are updated together from the values before them. False:
        word2vec's exact update, pair by pair, noise drawn for every pair.

    Returns:
      (loss summed over the pairs, number of pairs), float32 scalars.
    """
    return load().embedflow_skipgram_step(
        input_vectors.handle, output_vectors.handle, ids, rows, radius, noise_prob, noise_alias,
        learning_rate, seed, compute_loss, negatives=negatives, shared_negatives=shared_negatives)


def _table(subwords):
    """The op inputs of a subword table (offsets, rows), or two empty ones for None."""
    if subwords is None:
        return np.zeros([0], np.int64), np.zeros([0], np.int32)
    offsets, rows = subwords
    return offsets, rows


def cbow_step(input_vectors, output_vectors, ids, rows, radius, noise_prob, noise_alias,
              learning_rate, seed, compute_loss, negatives, subwords=None):
    """Trains CBOW on one batch in place (EmbedflowCbowStep, word2vec's cbow_mean=1).

    Every centre with at least one context is predicted from the mean of its contexts'
    input vectors (with `subwords`: the mean of all the subword rows of all its contexts,
    as fastText), against `negatives` noise words drawn for the centre; the gradient of
    the mean is added to every one of those rows, undivided, as word2vec and fastText do.

    Args:
      as `skipgram_step`; subwords: None, or (offsets int64 [V + 1], rows int32 [nnz]), the
        table of `trainer.subwords.ngram_table`; then input_vectors has its rows (V +
        buckets) and output_vectors V.

    Returns:
      (loss summed over the centres, number of centres trained), float32 scalars.
    """
    offsets, sub_rows = _table(subwords)
    return load().embedflow_cbow_step(
        input_vectors.handle, output_vectors.handle, ids, rows, radius, noise_prob, noise_alias,
        learning_rate, seed, compute_loss, offsets, sub_rows, negatives=negatives)


def subword_skipgram_step(input_vectors, output_vectors, ids, rows, radius, noise_prob, noise_alias,
                          learning_rate, seed, compute_loss, negatives, subwords, shared_negatives=True):
    """Trains fastText's skip-gram on one batch in place (EmbedflowSubwordSkipgramStep).

    A centre's input vector is the mean of its word's subword rows; it predicts the
    output vector of each of its contexts against `negatives` noise words. The centre's
    vector is composed once, and its gradient, summed over its pairs, is added to every
    one of its rows after them (fastText: after every pair).

    Args:
      as `skipgram_step`; subwords: (offsets int64 [V + 1], rows int32 [nnz]), the table of
        `trainer.subwords.ngram_table`; input_vectors has its rows, output_vectors V.
      shared_negatives: True (fast, HogBatch): a centre draws its noise words once for each
        group of 3 of its pairs, each counted once per pair it stands for, and its output
        rows are updated together; False: fastText's draws per pair, rows updated in turn.

    Returns:
      (loss summed over the pairs, number of pairs), float32 scalars.
    """
    offsets, sub_rows = _table(subwords)
    return load().embedflow_subword_skipgram_step(
        input_vectors.handle, output_vectors.handle, ids, rows, radius, noise_prob, noise_alias,
        learning_rate, seed, compute_loss, offsets, sub_rows, negatives=negatives,
        shared_negatives=shared_negatives)


def draw_batch(tokens, record_starts, records, keep, seed, window):
    """A batch for the step ops drawn from a corpus in memory (EmbedflowDrawBatch).

    Each token of `records` (in their order) is kept with probability keep[id], and each
    kept token gets a window radius drawn uniformly from 1..window, as word2vec draws both
    while it reads.

    Args:
      tokens: int32 [T] the corpus's token ids, record after record.
      record_starts: int64 [R + 1] where each record starts in `tokens` (last: T).
      records: int64 [B] the records of the batch.
      keep: float32 [V] keep probabilities (trainer.skipgram.keep_probabilities).
      seed: int64 scalar; the draws follow from it.
      window: the largest radius.

    Returns:
      ids int64 [N], rows int64 [N] (each token's record), radius int32 [N], and words
      float32 [] (the records' tokens before subsampling).
    """
    return load().embedflow_draw_batch(tokens, record_starts, records, keep, seed, window=window)


def alias_table(weights):
    """Walker's alias table for drawing index i with probability weights[i] / sum.

    Draw: pick a bucket b uniformly, then b itself with probability prob[b], else
    alias[b]. Built with Vose's method: O(V), exact up to float rounding.

    Returns:
      (prob float32 [V], alias int32 [V]).
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or len(w) == 0 or (w < 0).any() or not w.sum() > 0:
        raise ValueError("alias_table needs a non-empty vector of non-negative weights with a positive sum")
    n = len(w)
    scaled = w * (n / w.sum())
    prob = np.ones(n, dtype=np.float64)
    alias = np.arange(n, dtype=np.int32)
    small = [i for i in range(n) if scaled[i] < 1.0]
    large = [i for i in range(n) if scaled[i] >= 1.0]
    while small and large:
        s, g = small.pop(), large.pop()
        prob[s], alias[s] = scaled[s], g
        scaled[g] -= 1.0 - scaled[s]
        (small if scaled[g] < 1.0 else large).append(g)
    # What is left is 1 up to rounding: those buckets keep themselves.
    return prob.astype(np.float32), alias


def alias_probabilities(prob, alias):
    """The distribution an alias table draws from (for tests and checks)."""
    n = len(prob)
    p = prob.astype(np.float64) / n
    np.add.at(p, alias, (1.0 - prob.astype(np.float64)) / n)
    return p
