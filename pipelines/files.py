"""File helpers shared by the Beam jobs: listing inputs, opening them, reading counters."""

import gzip
import os

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from embedflow import artifacts

_GZIP_MAGIC = b"\x1f\x8b"


def open_binary(path):
    """Opens `path` for reading bytes, gunzipping when its content starts with gzip's magic."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        gzipped = f.read(2) == _GZIP_MAGIC
    raw = FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
    return gzip.GzipFile(fileobj=raw, mode="rb") if gzipped else raw


def is_dir(path):
    if artifacts.is_remote(path):
        return path.endswith("/")
    return os.path.isdir(path)


def is_visible(path):
    """False for dot files and dot folders."""
    return not os.path.basename(path.rstrip("/")).startswith(".")


def match_files(pattern, flag):
    """A glob (or a folder: its files) -> sorted FileMetadata of visible files.

    Raises:
      FileNotFoundError: naming `flag` and the pattern, when nothing matches.
    """
    if is_dir(pattern):
        pattern = artifacts.join(pattern.rstrip("/"), "*")
    try:
        matched = FileSystems.match([pattern])[0].metadata_list
    except Exception as e:  # Beam raises BeamIOError for missing local paths
        raise FileNotFoundError(f"{flag} {pattern}: cannot list it ({e})") from e
    files = [m for m in matched if not m.path.endswith("/") and not is_dir(m.path) and is_visible(m.path)]
    if not files:
        raise FileNotFoundError(f"{flag} {pattern} matches no file: check the path or glob")
    return sorted(files, key=lambda m: m.path)


def counter_totals(result, namespace):
    """Totals of the Beam counters in `namespace` of a finished pipeline."""
    totals = {}
    for c in result.metrics().query()["counters"]:
        if c.key.metric.namespace == namespace:
            value = c.committed if c.committed is not None else c.attempted
            totals[c.key.metric.name] = totals.get(c.key.metric.name, 0) + (value or 0)
    return totals
