"""Digits job: 32x32 digit images -> examples (Beam) -> an MLP such as "1024-512-10" (Keras).

    embedflow digits --input PATH [--input PATH ...] --format optdigits|mnist|png --output DIR
                     [--layers 1024-512-10] [--epochs N] [--batch-size N]
                     [--eval-input PATH ... | --eval-fraction F] [--seed N]
                     [--learning-rate R] [--dropout P] [--patience N] [...] [Beam options]
    python -m pipelines.digits ...   (the same)

Inputs (`--input` and `--eval-input`: a file, a glob or a folder; repeatable; local or gs://;
gzip is recognised by content, whatever the file is called):

- optdigits: UCI "optdigits-orig" files. Header lines (a count in `.tra`/`.tes`, a block of
  `key = value` lines in `.windep`) come before the first line of 32 `0`/`1` characters;
  then every digit is 32 lines of 32 `0`/`1` characters and one line holding its label; a
  final `EOF` line is allowed. `1` is ink.
- mnist: IDX files: an images file (idx3, unsigned bytes, n x H x W with H, W <= 32) and
  its labels file (idx1, n), paired by name (`train-images-idx3-ubyte` with
  `train-labels-idx1-ubyte`). Images are centred in 32x32 with zero padding (28x28 gets 2
  pixels each side, as LeNet-5 did); pixels are divided by 255.
- png: a folder holding one subfolder per label (`0` ... `9`) of `.png` files. Each image is
  converted to grey (alpha is ignored) and resized to 32x32 (bilinear, antialiased); pixels
  are divided by 255. No inversion is done: serve images of the polarity you trained on.

Errors, before any work starts: a path that matches nothing; an IDX file with a wrong
magic number, a type other than unsigned byte, images larger than 32x32, a length other
than its header promises (truncated, or trailing bytes), or no labels file of the same
count; a PNG subfolder that is not a label. An optdigits file with no label line where
one must be is an error naming the file and line. Counted skips (`counts` in info.json):
optdigits digits with rows other than 32 wide (`skipped_wrong_size`) or cut off by the
end of the file (`skipped_truncated`); labels outside [0, 10) in any format
(`skipped_label_out_of_range`); PNG files that do not decode (`skipped_unreadable`).

Split: `--eval-input` digits are the eval set and `--input` digits the training set.
With `--eval-fraction F` instead (default 0.1), a digit goes to eval when the sha256 of its
label and pixels falls in the first F of the hash range: deterministic, independent of
input order, sharding and `--seed`, and identical images never straddle the split. The
eval set drives early stopping and the reported metrics.

Reproducibility: the splits and their contents are deterministic, and `--seed` fixes the
initial weights, dropout and shuffling; but Beam spreads examples over the shard files in
an order that changes from run to run, so two trainings see the examples in different
orders and their accuracies differ slightly (about 0.3 points on optdigits' test set).

Output directory (published only when complete, see `embedflow.artifacts`):

    examples/{train,eval}-SSSSS-of-NNNNN.tfrecord.gz
                        GZIP TFRecords of tf.train.Example, spec schemas.digits.FEATURE_SPEC:
                        "image", 1024 floats in [0, 1] (the 32x32 image row by row, 0 is
                        background, 1 is ink), and "label", an int64 in [0, 10).
    model/              SavedModel (Keras 3 export), needs nothing else to serve. Endpoints:
                        `serve` float32 [batch, 1024] -> class probabilities [batch, 10]
                        (also the `serving_default` signature); `serve_images` float32
                        [batch, 32, 32] -> the same.
    metrics.json        eval and train accuracy and their gap, per-class precision and recall,
                        confusion matrix (rows: true class, columns: predicted class),
                        learning history.
    confusion_matrix.png, learning_curves.png
    info.json           inputs and fingerprints, counters, parameters, parameter count and
                        training examples per parameter, timings.
    COMPLETED           written last.
"""

import argparse
import hashlib
import logging
import os
import re
import struct
import time
import typing

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from embedflow import artifacts
from pipelines.corpus import pipeline_options
from pipelines import files
from pipelines.files import open_binary
from schemas import digits as schema

NAMESPACE = "embedflow.digits"
FORMATS = ("optdigits", "mnist", "png")
SKIP_REASONS = ("wrong_size", "truncated", "label_out_of_range", "unreadable")

_IDX_UBYTE = 0x08
_BITMAP_ROW = re.compile(rb"[01]+")
_LABEL_LINE = re.compile(rb"-?[0-9]{1,3}")
_CHUNK_IMAGES = 1024  # IDX images decoded per numpy call


def parse_args(argv):
    """Splits the job's own flags from Beam's.

    Returns:
      (job args namespace, list of Beam pipeline arguments).
    """
    parser = argparse.ArgumentParser(
        prog="embedflow digits",
        description="Turn 32x32 digit images into examples and train an MLP on them.",
        epilog="Other flags go to Beam (for example --runner, --direct_num_workers, --project).")
    parser.add_argument("--input", action="append", required=True, metavar="PATH",
                        help="training images: file, glob or folder (repeatable; local or gs://)")
    parser.add_argument("--format", choices=FORMATS, required=True,
                        help="optdigits bitmaps, MNIST IDX files, or a folder of PNGs by label")
    parser.add_argument("--output", required=True, metavar="DIR", help="output directory")
    held_out = parser.add_mutually_exclusive_group()
    held_out.add_argument("--eval-input", action="append", metavar="PATH",
                          help="eval images, same format (repeatable)")
    held_out.add_argument("--eval-fraction", type=float, default=None,
                          help="hold out this fraction of --input for eval (default 0.1)")
    parser.add_argument("--layers", default="1024-512-10",
                        help="MLP layer sizes, input to output (default 1024-512-10)")
    parser.add_argument("--epochs", type=int, default=30, help="most epochs (default 30)")
    parser.add_argument("--batch-size", type=int, default=128, help="batch size (default 128)")
    parser.add_argument("--learning-rate", type=float, default=1e-3,
                        help="Adam learning rate (default 1e-3)")
    parser.add_argument("--dropout", type=float, default=0.5,
                        help="dropout after every hidden layer while training (default 0.5; 0 = off)")
    parser.add_argument("--lr-decay-factor", type=float, default=0.2,
                        help="multiply the learning rate by this when eval loss stalls (default 0.2; 1 = off)")
    parser.add_argument("--lr-decay-patience", type=int, default=1,
                        help="epochs without a lower eval loss before that (default 1)")
    parser.add_argument("--patience", type=int, default=4,
                        help="stop after this many epochs without a lower eval loss (default 4)")
    parser.add_argument("--shuffle-buffer", type=int, default=10_000,
                        help="training examples shuffled together (default 10,000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and shuffling")
    parser.add_argument("--num-shards", type=int, default=4,
                        help="example files per split (default 4)")
    args, beam_args = parser.parse_known_args(argv)
    if args.eval_input is None and args.eval_fraction is None:
        args.eval_fraction = 0.1
    _validate(args)
    return args, beam_args


def _validate(args):
    checks = [
        (args.eval_fraction is None or 0 < args.eval_fraction < 1,
         f"--eval-fraction must be in (0, 1), got {args.eval_fraction}"),
        (args.num_shards >= 1, f"--num-shards must be >= 1, got {args.num_shards}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    artifacts.check_output_path(args.output)


# ---------------------------------------------------------------------------- inputs


class Source(typing.NamedTuple):
    """One unit of reading: an optdigits file, an IDX (images, labels) pair, or one PNG."""
    fmt: str
    split: typing.Optional[str]  # schema.TRAIN, schema.EVAL, or None: decided by hash
    paths: typing.Tuple[str, ...]
    label: typing.Optional[int] = None  # PNG only: from the subfolder name


def list_sources(patterns, fmt, split, flag):
    """Expands one flag's paths into Sources, checking what can be checked before work starts.

    Args:
      patterns: the flag's values (files, globs, folders).
      fmt: one of FORMATS.
      split: schema.TRAIN, schema.EVAL or None (split by hash).
      flag: the flag's name, for messages.

    Returns:
      (list of Source, list of Beam FileMetadata of the files read).

    Raises:
      FileNotFoundError: a path matches nothing.
      ValueError: an input is malformed (see the module docstring).
    """
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {FORMATS}, got {fmt!r}")
    if fmt == "png":
        sources, metadata = [], []
        for pattern in patterns:
            found = _list_png_folder(pattern, flag)
            sources += [Source(fmt, split, (m.path,), label) for m, label in found]
            metadata += [m for m, _ in found]
        return sources, metadata
    metadata = {}
    for pattern in patterns:
        metadata.update((m.path, m) for m in files.match_files(pattern, flag))
    metadata = [metadata[p] for p in sorted(metadata)]
    paths = [m.path for m in metadata]
    if fmt == "optdigits":
        return [Source(fmt, split, (p,)) for p in paths], metadata
    return [Source(fmt, split, pair) for pair in pair_idx_files(paths, flag)], metadata


def _list_png_folder(folder, flag):
    """A folder of label subfolders -> [(FileMetadata, label)] of its .png files."""
    if not files.is_dir(folder):
        raise ValueError(f"{flag} {folder}: with --format png, give a folder holding one "
                         f"subfolder of .png files per label (0 ... {schema.NUM_CLASSES - 1})")
    pattern = artifacts.join(folder.rstrip("/"), "*", "*")
    found = []
    for m in FileSystems.match([pattern])[0].metadata_list:
        label_dir = os.path.basename(os.path.dirname(m.path))
        if label_dir.startswith(".") or os.path.basename(m.path).startswith("."):
            continue
        if not m.path.lower().endswith(".png"):
            continue
        if not (label_dir.isascii() and label_dir.isdigit()
                and int(label_dir) < schema.NUM_CLASSES):
            raise ValueError(
                f"{flag} {folder}: subfolder {label_dir!r} is not a label: name the subfolders "
                f"0 ... {schema.NUM_CLASSES - 1}, after the digit their images show")
        found.append((m, int(label_dir)))
    if not found:
        raise FileNotFoundError(f"{flag} {folder} holds no LABEL/*.png file")
    return sorted(found, key=lambda f: f[0].path)


# ------------------------------------------------------------------------- optdigits


def parse_optdigits(lines, name, skip):
    """Digits of one optdigits-orig file.

    Args:
      lines: the file's lines, bytes.
      name: the file's name, for messages.
      skip: called with a reason (one of SKIP_REASONS) for every digit left out.

    Yields:
      (float32 [32, 32] image in {0, 1}, int label); labels are not range-checked here.

    Raises:
      ValueError: no label line after 32 rows.
    """
    rows, started = [], False
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not started:
            # Header lines, up to the first full bitmap row.
            started = len(line) == schema.IMAGE_SIZE and _BITMAP_ROW.fullmatch(line) is not None
            if not started:
                continue
        if len(rows) < schema.IMAGE_SIZE:
            if not rows and line in (b"", b"EOF"):
                continue  # between digits, or the end marker
            if _BITMAP_ROW.fullmatch(line) is None:
                raise ValueError(
                    f"{name}:{number}: expected row {len(rows) + 1} of 32 of a digit bitmap "
                    f"(0/1 characters), found {line[:40]!r}")
            rows.append(line)
            continue
        if _LABEL_LINE.fullmatch(line) is None:
            raise ValueError(f"{name}:{number}: expected the label line after 32 bitmap rows, "
                             f"found {line[:40]!r}")
        bitmap, rows = rows, []
        if any(len(r) != schema.IMAGE_SIZE for r in bitmap):
            skip("wrong_size")
            continue
        image = (np.frombuffer(b"".join(bitmap), dtype=np.uint8) - ord("0")).astype(np.float32)
        yield image.reshape(schema.IMAGE_SIZE, schema.IMAGE_SIZE), int(line)
    if rows:
        skip("truncated")


# ----------------------------------------------------------------------------- MNIST


class IdxInfo(typing.NamedTuple):
    path: str
    dims: typing.Tuple[int, ...]  # (n,) for labels, (n, rows, cols) for images


def read_idx_header(f, path):
    """Reads an IDX header of unsigned bytes from `f`. Returns the dimensions.

    Raises:
      ValueError: not an IDX file, or not of unsigned bytes.
    """
    magic = f.read(4)
    if len(magic) < 4 or magic[:2] != b"\x00\x00" or magic[3] == 0:
        raise ValueError(f"{path} is not an IDX file (magic number {magic.hex() or 'missing'}): "
                         "pass MNIST files such as train-images-idx3-ubyte(.gz)")
    if magic[2] != _IDX_UBYTE:
        raise ValueError(f"{path}: IDX data type 0x{magic[2]:02x} is not unsigned byte (0x08), "
                         "the type MNIST images and labels use")
    raw = f.read(4 * magic[3])
    if len(raw) < 4 * magic[3]:
        raise ValueError(f"{path} is truncated inside its IDX header")
    return struct.unpack(f">{magic[3]}I", raw)


def inspect_idx(path):
    """Checks one IDX file whole: header, shape, and a length that matches the header.

    Returns:
      IdxInfo.

    Raises:
      ValueError: see `read_idx_header`; images larger than 32x32; labels or images of
        another rank; truncated data or trailing bytes.
    """
    try:
        with open_binary(path) as f:
            dims = read_idx_header(f, path)
            if len(dims) not in (1, 3):
                raise ValueError(f"{path}: an IDX file of {len(dims)} dimensions is neither "
                                 "labels (1) nor images (3)")
            if len(dims) == 3 and (dims[1] > schema.IMAGE_SIZE or dims[2] > schema.IMAGE_SIZE):
                raise ValueError(f"{path}: images are {dims[1]}x{dims[2]}, larger than the "
                                 f"{schema.IMAGE_SIZE}x{schema.IMAGE_SIZE} the MLP takes")
            expected = int(np.prod(dims, dtype=np.int64))
            size = 0
            while True:
                chunk = f.read(1 << 22)
                if not chunk:
                    break
                size += len(chunk)
    except EOFError as e:  # gzip stream cut off
        raise ValueError(f"{path} is truncated: its gzip stream ends early ({e})") from e
    what = "images" if len(dims) == 3 else "labels"
    if size < expected:
        raise ValueError(f"{path} is truncated: its header promises {dims[0]} {what} "
                         f"({expected} bytes of data), it holds {size} bytes")
    if size > expected:
        raise ValueError(f"{path} is malformed: {size - expected} bytes follow the {dims[0]} "
                         f"{what} its header announces")
    return IdxInfo(path, tuple(dims))


def _pair_key(path):
    name = os.path.basename(path)
    name = re.sub(r"(images|labels)", "", name, count=1)
    return os.path.join(os.path.dirname(path), re.sub(r"idx[13]", "idx", name, count=1))


def pair_idx_files(paths, flag):
    """Pairs every IDX images file with its labels file (checked with `inspect_idx`).

    Files pair by name with "images"/"labels" and "idx3"/"idx1" taken out; a lone images
    file and a lone labels file pair whatever their names.

    Returns:
      sorted list of (images path, labels path).

    Raises:
      ValueError: a file is unpaired, or a pair's counts differ.
    """
    infos = [inspect_idx(p) for p in paths]
    images = [i for i in infos if len(i.dims) == 3]
    labels = [i for i in infos if len(i.dims) == 1]
    if len(images) == 1 and len(labels) == 1:
        pairs = [(images[0], labels[0])]
    else:
        by_key = {_pair_key(i.path): i for i in labels}
        pairs, unpaired = [], []
        for i in images:
            match = by_key.pop(_pair_key(i.path), None)
            if match is None:
                unpaired.append(i.path)
            else:
                pairs.append((i, match))
        unpaired += [i.path for i in by_key.values()]
        if unpaired:
            raise ValueError(
                f"{flag}: no matching IDX images/labels file for {', '.join(sorted(unpaired))}: "
                "pass each images file with its labels file (train-images-idx3-ubyte with "
                "train-labels-idx1-ubyte)")
    for image_info, label_info in pairs:
        if image_info.dims[0] != label_info.dims[0]:
            raise ValueError(f"{flag}: {image_info.path} holds {image_info.dims[0]} images but "
                             f"{label_info.path} holds {label_info.dims[0]} labels")
    return sorted((i.path, l.path) for i, l in pairs)


def center_image(pixels):
    """uint8 [h, w] with h, w <= 32 -> float32 [32, 32] in [0, 1], centred on zeros."""
    h, w = pixels.shape[-2:]
    top, left = (schema.IMAGE_SIZE - h) // 2, (schema.IMAGE_SIZE - w) // 2
    image = np.zeros(pixels.shape[:-2] + (schema.IMAGE_SIZE, schema.IMAGE_SIZE), np.float32)
    image[..., top:top + h, left:left + w] = pixels / np.float32(255)
    return image


def read_idx_pair(images_path, labels_path):
    """Streams the digits of an IDX (images, labels) pair, a chunk at a time.

    Yields:
      (float32 [32, 32] image in [0, 1], int label).

    Raises:
      ValueError: the files are shorter than their headers say.
    """
    with open_binary(images_path) as fi, open_binary(labels_path) as fl:
        n, h, w = read_idx_header(fi, images_path)
        (n_labels,) = read_idx_header(fl, labels_path)
        if n != n_labels:
            raise ValueError(f"{images_path} holds {n} images but {labels_path} {n_labels} labels")
        for start in range(0, n, _CHUNK_IMAGES):
            count = min(_CHUNK_IMAGES, n - start)
            try:
                pixels = fi.read(count * h * w)
                labels = fl.read(count)
            except EOFError as e:
                raise ValueError(f"{images_path} or {labels_path} is truncated ({e})") from e
            if len(pixels) < count * h * w or len(labels) < count:
                raise ValueError(f"{images_path} or {labels_path} is truncated at digit {start}")
            images = center_image(np.frombuffer(pixels, np.uint8).reshape(count, h, w))
            for image, label in zip(images, labels):
                yield image, int(label)


# ------------------------------------------------------------------------------- PNG


def decode_png(data):
    """PNG bytes -> float32 [32, 32] in [0, 1]: grey (alpha ignored), resized if needed.

    Raises:
      ValueError: the bytes are not a PNG image.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    try:
        grey = tf.io.decode_png(data, channels=1)  # uint8 [h, w, 1]; 16-bit is scaled down
    except tf.errors.InvalidArgumentError as e:
        raise ValueError(f"not a PNG image ({e.message.splitlines()[0]})") from e
    image = tf.cast(grey, tf.float32) / 255.0
    if image.shape[:2] != (schema.IMAGE_SIZE, schema.IMAGE_SIZE):
        image = tf.image.resize(image, (schema.IMAGE_SIZE, schema.IMAGE_SIZE),
                                method="bilinear", antialias=True)
    return np.clip(image.numpy()[:, :, 0], 0.0, 1.0).astype(np.float32)


# ----------------------------------------------------------------------------- Beam


def _counter(name):
    return beam.metrics.Metrics.counter(NAMESPACE, name)


class _ReadSource(beam.DoFn):
    """Source -> (split or None, float32 [32, 32] image, int label) per digit it holds."""

    def __init__(self):
        self.read = _counter("digits_read")
        self.skipped = {r: _counter(f"skipped_{r}") for r in SKIP_REASONS}

    def _skip(self, reason):
        self.skipped[reason].inc()

    def process(self, source):
        for image, label in self._digits(source):
            self.read.inc()
            if not 0 <= label < schema.NUM_CLASSES:
                self._skip("label_out_of_range")
                continue
            yield source.split, image, label

    def _digits(self, source):
        if source.fmt == "optdigits":
            with open_binary(source.paths[0]) as f:
                yield from parse_optdigits(f, source.paths[0], self._skip)
        elif source.fmt == "mnist":
            yield from read_idx_pair(*source.paths)
        else:
            with FileSystems.open(source.paths[0],
                                  compression_type=CompressionTypes.UNCOMPRESSED) as f:
                data = f.read()
            try:
                yield decode_png(data), source.label
            except ValueError as e:
                logging.warning("skipping %s: %s", source.paths[0], e)
                self._skip("unreadable")


class ReadDigits(beam.PTransform):
    """Reads digit images.

    Input: the pipeline root. Output: PCollection[(split or None, float32 [32, 32] image in
    [0, 1], int label in [0, 10))].
    """

    def __init__(self, *, sources):
        super().__init__()
        if not sources:
            raise ValueError("ReadDigits needs at least one source")
        bad = [s for s in sources if s.fmt not in FORMATS or s.split not in schema.SPLITS + (None,)]
        if bad:
            raise ValueError(f"ReadDigits: invalid source {bad[0]}")
        self._sources = list(sources)

    def expand(self, pbegin):
        return (pbegin
                | "ListSources" >> beam.Create(self._sources)
                # Spread the sources (PNG files above all) over the workers.
                | "SpreadSources" >> beam.Reshuffle()
                # Source -> (split or None, image, label)
                | "ReadSources" >> beam.ParDo(_ReadSource()))


def hash_split(image, label, eval_fraction):
    """The split of one digit, from the sha256 of its label and pixels."""
    digest = hashlib.sha256(b"%d:" % label + np.ascontiguousarray(image, np.float32).tobytes())
    position = int.from_bytes(digest.digest()[:8], "big") / 2.0 ** 64
    return schema.EVAL if position < eval_fraction else schema.TRAIN


class _AssignSplit(beam.DoFn):
    def __init__(self, eval_fraction):
        self._fraction = eval_fraction
        self.examples = {s: _counter(f"examples_{s}") for s in schema.SPLITS}

    def process(self, element):
        split, image, label = element
        if split is None:
            split = hash_split(image, label, self._fraction) if self._fraction else schema.TRAIN
        self.examples[split].inc()
        yield split, image, label


class AssignSplit(beam.PTransform):
    """Gives every digit without a split one, by hash (see `hash_split`).

    Input: PCollection[(split or None, image, label)]. Output: PCollection[(split, image, label)].
    """

    def __init__(self, *, eval_fraction=None):
        super().__init__()
        if eval_fraction is not None and not 0 <= eval_fraction < 1:
            raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
        self._fraction = eval_fraction

    def expand(self, digits):
        return digits | "HashSplit" >> beam.ParDo(_AssignSplit(self._fraction))


def encode_example(image, label):
    """float32 [32, 32] image, int label -> serialized tf.train.Example in schema.FEATURE_SPEC."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    feature = {
        schema.IMAGE_KEY: tf.train.Feature(float_list=tf.train.FloatList(
            value=np.asarray(image, np.float32).reshape(-1))),
        schema.LABEL_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


class WriteExamples(beam.PTransform):
    """PCollection[(split, image, label)] -> examples/{split}-SSSSS-of-NNNNN.tfrecord.gz."""

    def __init__(self, *, examples_dir, num_shards):
        super().__init__()
        if num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {num_shards}")
        self._dir, self._num_shards = examples_dir, num_shards

    def expand(self, examples):
        by_split = examples | "PartitionBySplit" >> beam.Partition(
            lambda element, _: schema.SPLITS.index(element[0]), len(schema.SPLITS))
        for split, pcoll in zip(schema.SPLITS, by_split):
            name = split.title()
            _ = (pcoll
                 # (split, image, label) -> serialized tf.train.Example
                 | f"Encode{name}" >> beam.MapTuple(lambda _, image, label: encode_example(image, label))
                 | f"Write{name}" >> beam.io.WriteToTFRecord(
                     artifacts.join(self._dir, split), file_name_suffix=schema.EXAMPLES_SUFFIX,
                     num_shards=self._num_shards, shard_name_template="-SSSSS-of-NNNNN",
                     compression_type=CompressionTypes.GZIP))


def build(pipeline, args, sources, examples_dir):
    """Adds the preprocessing to `pipeline`: sources -> example TFRecords in `examples_dir`."""
    _ = (pipeline
         | "ReadDigits" >> ReadDigits(sources=sources)
         | "AssignSplit" >> AssignSplit(eval_fraction=args.eval_fraction)
         | "WriteExamples" >> WriteExamples(examples_dir=examples_dir, num_shards=args.num_shards))


def _counters(result):
    return files.counter_totals(result, NAMESPACE)


def _check_splits(counts, args):
    """Raises when a split came out empty, saying what the counters saw."""
    seen = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "nothing read"
    if not counts.get(f"examples_{schema.TRAIN}"):
        raise ValueError(f"the train split is empty ({seen}): --input {' '.join(args.input)} "
                         "holds no usable digit")
    if not counts.get(f"examples_{schema.EVAL}"):
        hint = (f"--eval-input {' '.join(args.eval_input)} holds no usable digit"
                if args.eval_input else f"raise --eval-fraction (now {args.eval_fraction})")
        raise ValueError(f"the eval split is empty ({seen}): {hint}")


def example_files(examples_dir, split):
    """The sorted example files of one split."""
    pattern = artifacts.join(examples_dir, f"{split}-*{schema.EXAMPLES_SUFFIX}")
    return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)


def run(argv=None):
    """Runs the digits job: preprocessing, then training. Returns the output directory."""
    from trainer import digits as trainer  # pylint: disable=import-outside-toplevel

    args, beam_args = parse_args(argv)
    config = trainer.config_from_args(args)  # a bad --layers fails before any work
    sources, metadata = list_sources(args.input, args.format,
                                     schema.TRAIN if args.eval_input else None, "--input")
    if args.eval_input:
        eval_sources, eval_metadata = list_sources(args.eval_input, args.format, schema.EVAL,
                                                   "--eval-input")
        sources += eval_sources
    else:
        eval_metadata = []
    file_info, fingerprint = artifacts.fingerprint_files(metadata)
    eval_file_info, eval_fingerprint = artifacts.fingerprint_files(eval_metadata)
    logging.info("digits: %d %s sources, fingerprint %s", len(sources), args.format, fingerprint[:12])

    inputs = [m.path for m in metadata + eval_metadata]
    with artifacts.StagedOutput(args.output, inputs=inputs) as out:
        examples_dir = artifacts.join(out.path, schema.EXAMPLES_DIR)
        started = time.time()
        with beam.Pipeline(options=pipeline_options(beam_args, "digits")) as p:
            build(p, args, sources, examples_dir)
        counts = _counters(p.result)
        preprocessed = time.time()
        _check_splits(counts, args)
        report = trainer.train(
            config,
            train_files=example_files(examples_dir, schema.TRAIN),
            eval_files=example_files(examples_dir, schema.EVAL),
            train_count=counts[f"examples_{schema.TRAIN}"],
            eval_count=counts[f"examples_{schema.EVAL}"],
            output_dir=out.path)
        info = {
            "job": "digits",
            "inputs": {"format": args.format, "patterns": args.input, "files": file_info,
                       "fingerprint": fingerprint},
            "eval_inputs": ({"patterns": args.eval_input, "files": eval_file_info,
                             "fingerprint": eval_fingerprint} if args.eval_input else None),
            "parameters": {"eval_fraction": args.eval_fraction, "num_shards": args.num_shards,
                           **trainer.config_dict(config)},
            "counts": counts,
            "examples": {"dir": schema.EXAMPLES_DIR, "suffix": schema.EXAMPLES_SUFFIX,
                         "compression": schema.EXAMPLES_COMPRESSION},
            "model": report,
            "seconds": {"preprocess": round(preprocessed - started, 2),
                        "train": report["seconds"]},
        }
        out.publish(info)
    logging.info("digits: wrote %s", args.output)
    return args.output


if __name__ == "__main__":
    from embedflow import cli

    cli.exit_now(cli.run_job("digits", run, os.sys.argv[1:]))
