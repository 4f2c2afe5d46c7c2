"""Beam transforms of the digits job: read digit images, split them (PTransforms).

The job that runs them, its flags and its output contract: `jobs/digits.py`.

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
"""

import hashlib
import logging
import os
import re
import struct
import typing

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from core import files
from core.files import open_binary
from pipelines import examples
from schemas import digits as schema

NAMESPACE = "embedflow.digits"
FORMATS = ("optdigits", "mnist", "png")
SKIP_REASONS = ("wrong_size", "truncated", "label_out_of_range", "unreadable")

_IDX_UBYTE = 0x08
_BITMAP_ROW = re.compile(rb"[01]+")
_LABEL_LINE = re.compile(rb"-?[0-9]{1,3}")
_CHUNK_IMAGES = 1024  # IDX images decoded per numpy call


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
        found = [f for pattern in patterns
                 for f in examples.list_label_folders(pattern, flag, _digit_label, PNG_FOLDERS)]
        return [Source(fmt, split, (m.path,), label) for m, label in found], [m for m, _ in found]
    metadata = examples.unique_files(files.match_files(p, flag) for p in patterns)
    paths = [m.path for m in metadata]
    if fmt == "optdigits":
        return [Source(fmt, split, (p,)) for p in paths], metadata
    return [Source(fmt, split, pair) for pair in pair_idx_files(paths, flag)], metadata


PNG_FOLDERS = examples.FolderLayout(
    fmt="png", holds=f"one subfolder of .png files per label (0 ... {schema.NUM_CLASSES - 1})",
    rule=f"a label: name the subfolders 0 ... {schema.NUM_CLASSES - 1}, after the digit their "
         "images show",
    files="LABEL/*.png file", suffix=".png")


def _digit_label(name):
    """A PNG subfolder's name -> its digit, or None."""
    if name.isascii() and name.isdigit() and int(name) < schema.NUM_CLASSES:
        return int(name)
    return None


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
        while True:  # a cut-off gzip stream raises core.files.CorruptInput here
            chunk = f.read(1 << 22)
            if not chunk:
                break
            size += len(chunk)
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
            pixels = fi.read(count * h * w)  # damaged gzip: core.files.CorruptInput
            labels = fl.read(count)
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


class _ReadSource(examples.CountingReader):
    """Source -> (split or None, float32 [32, 32] image, int label) per digit it holds."""

    def __init__(self):
        super().__init__(NAMESPACE, "digits_read", SKIP_REASONS)

    def process(self, source):
        for image, label in self._digits(source):
            self.read.inc()
            if not 0 <= label < schema.NUM_CLASSES:
                self.skip("label_out_of_range")
                continue
            yield source.split, image, label

    def _digits(self, source):
        if source.fmt == "optdigits":
            with open_binary(source.paths[0]) as f:
                yield from parse_optdigits(f, source.paths[0], self.skip)
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
                self.skip("unreadable")


class ReadDigits(examples.ReadSources):
    """Reads digit images.

    Input: the pipeline root. Output: PCollection[(split or None, float32 [32, 32] image in
    [0, 1], int label in [0, 10))].
    """

    def __init__(self, *, sources):
        super().__init__(sources=sources, formats=FORMATS, splits=schema.SPLITS + (None,))

    def reader(self):
        return _ReadSource()


def hash_split(image, label, eval_fraction):
    """The split of one digit, from the sha256 of its label and pixels."""
    digest = hashlib.sha256(b"%d:" % label + np.ascontiguousarray(image, np.float32).tobytes())
    position = int.from_bytes(digest.digest()[:8], "big") / 2.0 ** 64
    return schema.EVAL if position < eval_fraction else schema.TRAIN


class _AssignSplit(beam.DoFn):
    def __init__(self, eval_fraction):
        self._fraction = eval_fraction
        self.examples = {s: beam.metrics.Metrics.counter(NAMESPACE, f"examples_{s}")
                         for s in schema.SPLITS}

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


def encode_example(split, image, label):
    """One digit -> (split, label, serialized tf.train.Example in schema.FEATURE_SPEC)."""
    return split, label, examples.serialize({
        schema.IMAGE_KEY: examples.float_feature(np.asarray(image, np.float32).reshape(-1)),
        schema.LABEL_KEY: examples.int64_feature([label]),
    })
