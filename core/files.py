"""File helpers shared by the jobs: listing inputs and opening them, compressed or not.

A compressed input that is cut short or corrupt fails when it is read, with a
`CorruptInput` error naming the file, instead of yielding what came before the damage.
"""

import bz2
import gzip
import os
import zlib

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from core import outputs

_GZIP_MAGIC = b"\x1f\x8b"


class CorruptInput(ValueError):
    """A compressed input file is truncated or corrupt."""


class _Checked:
    """A decompressing reader whose damage errors name the file (CorruptInput)."""

    def __init__(self, path, kind, opener):
        self._path, self._kind = path, kind
        self._raw = _raw(path)
        self._stream = opener(self._raw)

    def _fail(self, error):
        return CorruptInput(
            f"{self._path}: the {self._kind} data is truncated or corrupt ({error}); replace "
            "the file (re-copy or re-download it) or leave it out of the inputs")

    def read(self, size=-1):
        try:
            return self._stream.read(size)
        except (EOFError, zlib.error, OSError) as error:
            raise self._fail(error) from None

    def readline(self, size=-1):
        try:
            return self._stream.readline(size)
        except (EOFError, zlib.error, OSError) as error:
            raise self._fail(error) from None

    def __iter__(self):
        return iter(self.readline, b"")

    def __getattr__(self, name):
        return getattr(self._stream, name)

    def __enter__(self):
        return self

    def close(self):
        self._stream.close()
        self._raw.close()

    def __exit__(self, *exc):
        self.close()
        return False


def _raw(path):
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def open_binary(path):
    """Opens `path` for reading bytes, gunzipping when its content starts with gzip's magic."""
    with _raw(path) as f:
        gzipped = f.read(2) == _GZIP_MAGIC
    if gzipped:
        return _Checked(path, "gzip", lambda raw: gzip.GzipFile(fileobj=raw, mode="rb"))
    return _raw(path)


def is_dir(path):
    if outputs.is_remote(path):
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
        pattern = outputs.join(pattern.rstrip("/"), "*")
    try:
        matched = FileSystems.match([pattern])[0].metadata_list
    except Exception as e:  # Beam raises BeamIOError for missing local paths
        raise FileNotFoundError(f"{flag} {pattern}: cannot list it ({e})") from e
    files = [m for m in matched if not m.path.endswith("/") and not is_dir(m.path) and is_visible(m.path)]
    if not files:
        raise FileNotFoundError(f"{flag} {pattern} matches no file: check the path or glob")
    return sorted(files, key=lambda m: m.path)


def open_decompressed(path):
    """Opens `path` for reading bytes, decompressed by its extension (.gz, .bz2)."""
    kind = CompressionTypes.detect_compression_type(path)
    if kind == CompressionTypes.GZIP:
        return _Checked(path, "gzip", lambda raw: gzip.GzipFile(fileobj=raw, mode="rb"))
    if kind == CompressionTypes.BZIP2:
        return _Checked(path, "bzip2", lambda raw: bz2.BZ2File(raw, mode="rb"))
    return FileSystems.open(path, compression_type=kind)
