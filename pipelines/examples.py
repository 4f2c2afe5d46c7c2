"""Beam pieces shared by the labelled-example jobs (digits, sentiment): read, encode, write.

Each job reads its own inputs into `(split, class index, ...)` elements with a
`ReadSources` subclass and a `CountingReader` DoFn, encodes them as tf.train.Example,
and writes them with `WriteExamples` into the layout of `schemas/examples.py`:
examples/{split}-SSSSS-of-NNNNN.tfrecord.gz. `example_files` lists them again.

Counters (in the job's namespace, read back into info.json `counts`):
`skipped_{reason}` per element left out and `examples_{split}_class_{i}` per example
written.
"""

import os
import typing

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from core import files, outputs
from schemas import examples as schema

def class_counter(split, label):
    """The counter of the examples of one class written to one split."""
    return f"examples_{split}_class_{int(label)}"


def class_counts(counts, split, num_classes):
    """Examples per class of one split, in class-index order, from counter totals."""
    return [counts.get(class_counter(split, i), 0) for i in range(num_classes)]


# ---------------------------------------------------------------------------- inputs


def unique_files(matched):
    """FileMetadata lists -> one list, each path once, sorted by path."""
    by_path = {m.path: m for metadata in matched for m in metadata}
    return [by_path[p] for p in sorted(by_path)]


class FolderLayout(typing.NamedTuple):
    """A folder of one subfolder per class, as a job's `--format` expects it (for messages)."""
    fmt: str  # the --format value
    holds: str  # what the folder should hold: "one subfolder of .png files per label (0 ... 9)"
    rule: str  # what a subfolder name must be: "a label: name the subfolders 0 ... 9"
    files: str  # the files looked for: "LABEL/*.png file"
    suffix: str = ""  # only files whose name ends so (case-insensitive); "" takes every file


def list_label_folders(folder, flag, label_of, layout):
    """A folder of label subfolders -> [(FileMetadata, label)] of the files inside them.

    Hidden files and subfolders are passed over.

    Args:
      folder: the flag's value.
      flag: the flag's name, for messages.
      label_of: a subfolder's name -> its label, or None when it names no class.
      layout: FolderLayout.

    Raises:
      ValueError: `folder` is not a folder, or a subfolder names no class.
      FileNotFoundError: no file in any subfolder.
    """
    if not files.is_dir(folder):
        raise ValueError(f"{flag} {folder}: with --format {layout.fmt}, give a folder holding "
                         f"{layout.holds}")
    found = []
    for m in FileSystems.match([outputs.join(folder.rstrip("/"), "*", "*")])[0].metadata_list:
        name = os.path.basename(os.path.dirname(m.path))
        if not files.is_visible(name) or not files.is_visible(m.path) or files.is_dir(m.path):
            continue
        if not m.path.lower().endswith(layout.suffix):
            continue
        label = label_of(name)
        if label is None:
            raise ValueError(f"{flag} {folder}: subfolder {name!r} is not {layout.rule}")
        found.append((m, label))
    if not found:
        raise FileNotFoundError(f"{flag} {folder} holds no {layout.files}")
    return sorted(found, key=lambda f: f[0].path)


# ----------------------------------------------------------------------------- read


class CountingReader(beam.DoFn):
    """Base of the jobs' reading DoFns: a counter of what was read and one per skip reason."""

    def __init__(self, namespace, read_counter, skip_reasons):
        super().__init__()
        self.read = beam.metrics.Metrics.counter(namespace, read_counter)
        self.skipped = {r: beam.metrics.Metrics.counter(namespace, f"skipped_{r}")
                        for r in skip_reasons}

    def skip(self, reason):
        """Counts one element left out for `reason` (one of the skip reasons)."""
        self.skipped[reason].inc()


class ReadSources(beam.PTransform):
    """Base of the jobs' readers: Sources spread over the workers, read by `reader()`.

    Input: the pipeline root. Output: what the reader DoFn yields per source.
    """

    def __init__(self, *, sources, formats, splits):
        """`sources` are NamedTuples with `fmt` (one of `formats`) and `split` (of `splits`)."""
        super().__init__()
        name = type(self).__name__
        if not sources:
            raise ValueError(f"{name} needs at least one source")
        bad = [s for s in sources if s.fmt not in formats or s.split not in splits]
        if bad:
            raise ValueError(f"{name}: invalid source {bad[0]}")
        self._sources = list(sources)

    def reader(self):
        """The DoFn that turns one source into elements."""
        raise NotImplementedError

    def expand(self, pbegin):
        return (pbegin
                | "ListSources" >> beam.Create(self._sources)
                # Spread the sources (the files of label folders above all) over the workers.
                | "SpreadSources" >> beam.Reshuffle()
                # Source -> the reader's elements
                | "ReadSources" >> beam.ParDo(self.reader()))


# ---------------------------------------------------------------------------- write


def int64_feature(values):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))


def float_feature(values):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    return tf.train.Feature(float_list=tf.train.FloatList(value=values))


def serialize(features):
    """{name: tf.train.Feature} -> a serialized tf.train.Example."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


class _CountAndEncode(beam.DoFn):
    """(split, ...) -> serialized example, counting the examples of each (split, class)."""

    def __init__(self, namespace, encode):
        super().__init__()
        self._namespace, self._encode = namespace, encode
        self._counters = {}

    def process(self, element):
        split, label, serialized = self._encode(*element)
        key = class_counter(split, label)
        if key not in self._counters:
            self._counters[key] = beam.metrics.Metrics.counter(self._namespace, key)
        self._counters[key].inc()
        yield serialized


class WriteExamples(beam.PTransform):
    """Writes examples as GZIP TFRecords, one set of shard files per split.

    Input: PCollection[(split, ...)], the job's elements, every split one of `splits`.
    Output: examples/{split}-SSSSS-of-NNNNN.tfrecord.gz under `examples_dir`, and the
    counters `examples_{split}_class_{i}`.
    """

    def __init__(self, *, examples_dir, num_shards, encode, namespace, splits=schema.SPLITS):
        """`encode(*element)` -> (split, class index, serialized tf.train.Example)."""
        super().__init__()
        if num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {num_shards}")
        self._dir, self._num_shards, self._splits = examples_dir, num_shards, tuple(splits)
        self._encode, self._namespace = encode, namespace

    def expand(self, examples):
        by_split = examples | "PartitionBySplit" >> beam.Partition(
            lambda element, _: self._splits.index(element[0]), len(self._splits))
        for split, pcoll in zip(self._splits, by_split):
            name = split.title()
            _ = (pcoll
                 # (split, ...) -> serialized tf.train.Example
                 | f"Encode{name}" >> beam.ParDo(_CountAndEncode(self._namespace, self._encode))
                 | f"Write{name}" >> beam.io.WriteToTFRecord(
                     outputs.join(self._dir, split), file_name_suffix=schema.EXAMPLES_SUFFIX,
                     num_shards=self._num_shards, shard_name_template=schema.SHARD_NAME_TEMPLATE,
                     compression_type=CompressionTypes.GZIP))


def example_files(examples_dir, split):
    """The sorted example files of one split."""
    pattern = outputs.join(examples_dir, f"{split}-*{schema.EXAMPLES_SUFFIX}")
    return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
