"""Lineage of a run: input and stage fingerprints, copies of reused stages, the manifest."""

import datetime
import hashlib
import json
import os
import shutil
import subprocess
import uuid

from apache_beam.io.filesystems import FileSystems

from core import __version__, outputs
from schemas import artifacts as names
from schemas.runs import MANIFEST_FILE


def digest(obj):
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def fingerprint_inputs(patterns, key):
    """Fingerprints the files that `patterns` (globs, files or folders) name.

    Raises:
      FileNotFoundError: a pattern matches nothing; the message names the config key.
    """
    metadata = []
    for pattern in patterns:
        matched = FileSystems.match([pattern])[0].metadata_list
        if not matched or (not outputs.is_remote(pattern) and os.path.isdir(pattern)):
            folder = pattern.rstrip("/")
            matched = FileSystems.match([folder + "/**" if outputs.is_remote(folder)
                                         else os.path.join(folder, "**")])[0].metadata_list
        if not matched:
            raise FileNotFoundError(f"config inputs.{key}: {pattern} matches no file")
        metadata.extend(matched)
    files, digest = outputs.fingerprint_files(metadata)
    return {"patterns": list(patterns), "files": files, "fingerprint": digest}


def embedflow_version():
    return __version__


def new_run_name():
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def copy_stage(source, target):
    """Copies a complete stage output into `target`, published like any job output."""
    info = outputs.read_info(source)
    skip = {names.INFO_FILE, names.COMPLETED_FILE}
    with outputs.StagedOutput(target) as out:
        if not outputs.is_remote(source) and not outputs.is_remote(target):
            shutil.copytree(source, out.path, dirs_exist_ok=True,
                            ignore=lambda d, files: [f for f in files if d == source and f in skip])
        else:
            prefix = source.rstrip("/") + "/"
            files = [f for f in outputs.list_files(source)
                     if f[len(prefix):] not in skip]
            FileSystems.copy(files, [outputs.join(out.path, f[len(prefix):]) for f in files])
        out.publish(info)


def git_commit():
    """(commit, dirty) of the working directory's git checkout; $EMBEDFLOW_GIT_COMMIT wins."""
    if os.environ.get("EMBEDFLOW_GIT_COMMIT"):
        return os.environ["EMBEDFLOW_GIT_COMMIT"], None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10, check=True).stdout.strip()
        return commit, bool(dirty)
    except (OSError, subprocess.SubprocessError):
        return None, None


def write_manifest(run, status, started_at, metrics=None, gates=None, promotion=None, error=None):
    commit, dirty = git_commit()
    manifest = {
        "run": run.name, "root": run.root, "status": status, "started_at": started_at,
        "finished_at": outputs.utc_now(), "config_file": run.config_file, "config": run.config,
        "inputs": run.inputs, "stages": run.records,
        "warm_start_from": run.warm_start if run.warm_start else run.records.get("train", {}).get("warm_start"),
        "metrics": metrics if metrics is not None else {}, "gates": gates if gates is not None else [],
        "promotion": promotion, "git": {"commit": commit, "dirty": dirty},
        "versions": outputs.library_versions(),
    }
    if error:
        manifest["error"] = error
    outputs.write_text(outputs.join(run.dir, MANIFEST_FILE),
                         json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
    return manifest
