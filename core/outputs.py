"""Output directories that appear only when complete.

Every job writes into a staging directory beside its final output, then publishes:
the staging directory replaces the final one, `info.json` is written, and the
`COMPLETED` marker is written last. A job that fails leaves neither a `COMPLETED`
marker nor a half-written final directory; a re-run replaces the old output
instead of mixing with it. Works on local paths and on `gs://` (through Beam's
`FileSystems`, which reaches every filesystem Beam knows).
"""

import datetime
import hashlib
import json
import logging
import os
import shutil
import socket
import sys
import uuid

from apache_beam.io.filesystems import FileSystems

from core import __version__
from schemas import artifacts as names

_STAGING_TAG = ".partial-"


def is_remote(path):
    return "://" in path


def join(*parts):
    return FileSystems.join(*parts) if is_remote(parts[0]) else os.path.join(*parts)


def list_files(root):
    """All file paths under `root` (recursive), sorted."""
    if not is_remote(root):
        found = []
        for dirpath, _, files in os.walk(root):
            found.extend(os.path.join(dirpath, f) for f in files)
        return sorted(found)
    root = root.rstrip("/") + "/"
    result = FileSystems.match([root + "**"])[0]
    return sorted(m.path for m in result.metadata_list)


def exists(path):
    if not is_remote(path):
        return os.path.exists(path)
    return FileSystems.exists(path) or bool(list_files(path))


def delete_tree(path):
    if not is_remote(path):
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
        return
    files = list_files(path)
    if files:
        FileSystems.delete(files)


def write_text(path, text):
    with FileSystems.create(path) as f:
        f.write(text.encode("utf-8"))


def read_text(path):
    with FileSystems.open(path) as f:
        return f.read().decode("utf-8")


def check_output_path(path, flag="--output"):
    """The checks of an output path that need no listing: given, not a file."""
    if not path:
        raise ValueError(f"{flag} is required: the directory to write the job's output to")
    if not is_remote(path):
        if os.path.isfile(path):
            raise ValueError(
                f"{flag} {path} is a file, not a directory: choose another path or remove the file")
        parent = os.path.dirname(os.path.abspath(path))
        if os.path.isfile(parent):
            raise ValueError(f"{flag} {path}: its parent {parent} is a file")


def check_output_dir(path, flag="--output", inputs=()):
    """Fails before work starts when `path` cannot become an output directory.

    An output directory is replaced whole when the job publishes, so it may only be a
    new path, an empty directory, or an earlier embedflow output (one holding
    embedflow's `info.json`), and never one of the job's inputs, a directory that holds
    one, or a path inside one.

    Args:
      path: the output directory (local or `gs://`).
      flag: the flag that named it, for messages.
      inputs: paths of the job's input files or directories (None entries are ignored).

    Raises:
      ValueError: naming `flag`, the path and what to do.
    """
    check_output_path(path, flag)
    check_not_an_input(path, flag, inputs)
    check_replaceable(path, flag)


def _normalized(path):
    if is_remote(path):
        return path.rstrip("/")
    return os.path.realpath(os.path.abspath(path))


def check_not_an_input(path, flag, inputs):
    """Raises when the output `path` is, contains or lies inside one of `inputs`."""
    out = _normalized(path)
    sep = "/" if is_remote(path) else os.sep
    for given in inputs:
        if not given:
            continue
        if is_remote(given) != is_remote(path):
            continue
        source = _normalized(given)
        if out == source:
            why = "is"
        elif source.startswith(out + sep):
            why = "contains"
        elif out.startswith(source + sep):
            why = "lies inside"
        else:
            continue
        raise ValueError(
            f"{flag} {path} {why} the job's input {given}: publishing the output would "
            "replace it. Write the output to a separate directory.")


def _is_embedflow_info(info_path):
    try:
        info = json.loads(read_text(info_path))
    except Exception:  # pylint: disable=broad-except
        return False
    return isinstance(info, dict) and "layout_version" in info


def foreign_entries(path):
    """What in an existing `path` keeps a job from replacing it: [] when it may.

    A path may be replaced when it does not exist, is an empty directory, or holds
    embedflow's `info.json` (an earlier output, complete or cut short while publishing).
    Otherwise returns the names it holds, sorted.
    """
    if is_remote(path):
        prefix = path.rstrip("/") + "/"
        names_found = sorted({p[len(prefix):].split("/")[0] for p in list_files(path)})
    elif os.path.isdir(path):
        names_found = sorted(os.listdir(path))
    else:
        return []
    if not names_found:
        return []
    if names.INFO_FILE in names_found and _is_embedflow_info(join(path, names.INFO_FILE)):
        return []
    return names_found


def check_replaceable(path, flag="--output"):
    """Raises when `path` holds anything that no embedflow job published."""
    found = foreign_entries(path)
    if found:
        shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        raise ValueError(
            f"{flag} {path} already holds files that no embedflow job wrote ({shown}): a job "
            "replaces its output directory whole, so it writes only to a new or empty "
            "directory or over an earlier embedflow output. Choose another path, or remove "
            "those files yourself.")


class StagedOutput:
    """A job's output directory, staged and published atomically.

    Use as a context manager; call `publish(info)` as the job's last act. Leaving the
    block without publishing (an exception) deletes the staging directory.
    """

    def __init__(self, final_dir, flag="--output", inputs=()):
        check_output_dir(final_dir, flag, inputs)
        self.flag = flag
        self.final_dir = final_dir.rstrip("/") if is_remote(final_dir) else os.path.abspath(final_dir)
        self.path = f"{self.final_dir}{_STAGING_TAG}{uuid.uuid4().hex[:12]}"
        self.published = False

    def __enter__(self):
        remove_stale_stagings(self.final_dir)
        if not is_remote(self.path):
            os.makedirs(self.path)
        write_text(join(self.path, names.STAGING_OWNER_FILE), json.dumps(process_identity()))
        return self

    def __exit__(self, exc_type, exc, tb):
        if not self.published:
            try:
                delete_tree(self.path)
            except Exception:  # pylint: disable=broad-except
                logging.exception("could not remove staging directory %s", self.path)
        return False

    def publish(self, info):
        """Moves the staged files into place, then writes info.json and COMPLETED."""
        info = dict(info)
        info.setdefault("layout_version", names.LAYOUT_VERSION)
        info.setdefault("completed_at", utc_now())
        info.setdefault("versions", library_versions())
        payload = json.dumps(info, indent=2, sort_keys=True, default=str) + "\n"
        # Checked again: something may have written there while the job ran.
        check_replaceable(self.final_dir, self.flag)
        FileSystems.delete([join(self.path, names.STAGING_OWNER_FILE)])
        if is_remote(self.final_dir):
            self._publish_remote()
        else:
            self._publish_local()
        write_text(join(self.final_dir, names.INFO_FILE), payload)
        write_text(join(self.final_dir, names.COMPLETED_FILE), utc_now() + "\n")
        self.published = True
        return self.final_dir

    def _publish_local(self):
        old = None
        if os.path.exists(self.final_dir):
            old = f"{self.final_dir}.old-{uuid.uuid4().hex[:12]}"
            os.replace(self.final_dir, old)
        os.replace(self.path, self.final_dir)
        if old:
            shutil.rmtree(old, ignore_errors=True)

    def _publish_remote(self):
        # Object stores have no directory rename. The old output's COMPLETED marker goes
        # first, so no reader trusts a half-replaced directory, and its info.json last, so
        # the prefix stays recognisably embedflow's (replaceable) if this is cut short.
        marker = join(self.final_dir, names.COMPLETED_FILE)
        info = join(self.final_dir, names.INFO_FILE)
        if FileSystems.exists(marker):
            FileSystems.delete([marker])
        old = [p for p in list_files(self.final_dir) if p != info]
        if old:
            FileSystems.delete(old)
        sources = list_files(self.path)
        prefix = self.path.rstrip("/") + "/"
        targets = [self.final_dir + "/" + s[len(prefix):] for s in sources]
        if sources:
            FileSystems.rename(sources, targets)


def process_identity(pid=None):
    """{"host", "pid", "started"}: enough to tell later whether this process still runs."""
    pid = os.getpid() if pid is None else pid
    return {"host": socket.gethostname(), "pid": pid, "started": _start_ticks(pid)}


def _start_ticks(pid):
    """The process's start time in clock ticks since boot (Linux), or None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def is_stale(owner):
    """True when `owner` (a process_identity) is a process of this host that has ended."""
    if not isinstance(owner, dict) or owner.get("host") != socket.gethostname():
        return False
    try:
        pid = int(owner["pid"])
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (KeyError, TypeError, ValueError, PermissionError, OverflowError):
        return False
    # A live process with that pid: stale only if it is another process (pid reused).
    return owner.get("started") is not None and _start_ticks(pid) != owner["started"]


def remove_stale_stagings(final_dir):
    """Deletes `<final_dir>.partial-*` staging directories left by killed runs.

    Only directories whose owner file names a process of this host that has ended are
    removed: a staging directory of a running job, of another host or without an owner
    file is left alone.
    """
    pattern = f"{final_dir.rstrip('/')}{_STAGING_TAG}*/{names.STAGING_OWNER_FILE}"
    try:
        owners = [m.path for m in FileSystems.match([pattern])[0].metadata_list]
    except Exception:  # pylint: disable=broad-except  (nothing matched, or no listing)
        return []
    removed = []
    for owner_file in owners:
        try:
            owner = json.loads(read_text(owner_file))
        except Exception:  # pylint: disable=broad-except
            continue
        if is_stale(owner):
            staging = owner_file[:-len(names.STAGING_OWNER_FILE)].rstrip("/")
            logging.info("removing %s, left by process %s on %s, which has ended",
                         staging, owner.get("pid"), owner.get("host"))
            delete_tree(staging)
            removed.append(staging)
    return removed


def require_completed(path, flag, producer):
    """Raises unless `path` is the complete output of a job.

    Args:
      path: the input directory.
      flag: the flag that named it, for the message.
      producer: the command that makes such a directory, for the message.
    """
    marker = join(path, names.COMPLETED_FILE)
    if not FileSystems.exists(marker):
        if not exists(path):
            raise FileNotFoundError(f"{flag} {path} does not exist: run `{producer}` first")
        raise FileNotFoundError(
            f"{flag} {path} has no {names.COMPLETED_FILE} marker: the job that writes it "
            f"did not finish. Re-run `{producer}` into it.")
    return read_info(path)


def read_info(path):
    return json.loads(read_text(join(path, names.INFO_FILE)))


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def library_versions():
    """Versions of the libraries that shape the outputs."""
    versions = {"python": sys.version.split()[0]}
    for module in ("apache_beam", "tensorflow", "tensorflow_transform", "numpy", "pyarrow", "keras"):
        mod = sys.modules.get(module)
        if mod is not None:
            versions[module] = getattr(mod, "__version__", "unknown")
    versions["embedflow"] = __version__
    return versions


def fingerprint_files(metadata):
    """Fingerprints input files by path, size and modification time.

    Args:
      metadata: Beam `FileMetadata` objects.

    Returns:
      (list of per-file dicts, one sha256 over all of them).
    """
    files = [{"path": m.path, "size": m.size_in_bytes,
              "mtime": round(m.last_updated_in_seconds or 0, 3)} for m in metadata]
    files.sort(key=lambda f: f["path"])
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    return files, digest


def write_bytes(path, data):
    with FileSystems.create(path) as f:
        f.write(data)


def write_json(path, obj):
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))
