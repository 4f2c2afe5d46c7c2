"""The trainer's fused CPU kernel: build, cache and load it; the noise alias table.

`sgns_cpu.cc` beside this file is a TensorFlow custom op (EmbedflowSkipgramStep) that
trains skip-gram with negative sampling on a batch of tokens in place, one pair after
another, as word2vec's C tool does. TensorFlow's own ops cannot fuse that loop on the
CPU: every step would materialise the gathered rows and scatter them back.

The op is compiled on first use with the C++ compiler ($CXX, else g++) against the
headers of the installed TensorFlow (tf.sysconfig), for this machine's processor
(-march=native), and cached under $EMBEDFLOW_KERNEL_CACHE (default
~/.cache/embedflow/kernels) by a hash of the source, the compiler flags, TensorFlow's
version and the processor's features: a later run, or another machine sharing the
cache, only loads it. The build writes to a temporary file and renames it, so
concurrent first runs cannot load a half-written library.
"""

import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile

import numpy as np

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sgns_cpu.cc")
CACHE_ENV = "EMBEDFLOW_KERNEL_CACHE"
_FLAGS = ["-O3", "-march=native", "-fopenmp-simd", "-shared", "-fPIC",
          "-Wno-deprecated-declarations", "-Wno-interference-size"]
# TensorFlow's bundled Eigen does not compile with AVX512-FP16 enabled (g++ 12 on a
# Sapphire Rapids CPU fails in PacketMathFP16.h); the kernel uses no half floats.
_X86_OPT_OUT = ["-mno-avx512fp16"]
_loaded = {}
_flags_by_compiler = {}


def compiler_flags(cxx):
    """_FLAGS plus the opt-outs this compiler understands (probed once per compiler)."""
    if shutil.which(cxx) is None:
        return list(_FLAGS)
    if cxx not in _flags_by_compiler:
        extra = []
        if platform.machine() in ("x86_64", "AMD64"):
            for flag in _X86_OPT_OUT:
                probe = subprocess.run([cxx, flag, "-x", "c++", "-fsyntax-only", os.devnull],
                                       capture_output=True, check=False)
                if probe.returncode == 0:
                    extra.append(flag)
        _flags_by_compiler[cxx] = _FLAGS + extra
    return _flags_by_compiler[cxx]


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
    """The loaded op module (builds it first if no cached build matches)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    path = library_path()
    if path not in _loaded:
        if not os.path.exists(path):
            build(path)
        try:
            _loaded[path] = tf.load_op_library(path)
        except (tf.errors.NotFoundError, OSError) as error:
            raise KernelUnavailable(f"loading {path} failed: {error}; delete it to rebuild") from error
    return _loaded[path]


def skipgram_step(input_vectors, output_vectors, ids, rows, radius, noise_prob, noise_alias,
                  learning_rate, seed, compute_loss, negatives):
    """Runs EmbedflowSkipgramStep (see sgns_cpu.cc); returns (loss sum, pairs)."""
    return load().embedflow_skipgram_step(
        input_vectors.handle, output_vectors.handle, ids, rows, radius, noise_prob, noise_alias,
        learning_rate, seed, compute_loss, negatives=negatives)


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
