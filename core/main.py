"""How a job's process starts and ends, shared by `embedflow` and `python -m jobs.X`.

A process that ran a tf.Transform pipeline can crash at interpreter exit inside
protobuf's upb garbage collection (protocolbuffers/protobuf#22067) even after
complete success, so every entry point ends through `exit_now`, which flushes and
leaves with the real status through `os._exit`.
"""

import logging
import os
import sys

USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError)


def exit_now(status):
    """Flushes everything and exits with `status`, skipping interpreter teardown."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # pylint: disable=broad-except
            pass
    os._exit(status)  # pylint: disable=protected-access


def _interrupted(error):
    """True when `error` is, wraps or reports a KeyboardInterrupt (Beam re-raises it
    from its worker threads as a RuntimeError that names it)."""
    seen = 0
    while error is not None and seen < 20:
        if isinstance(error, KeyboardInterrupt) or "KeyboardInterrupt" in str(error)[:2000]:
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


def _not_reported_below(record):
    """Drops Beam's ERROR log of an exception that run_job reports in one line."""
    exc = record.exc_info[1] if record.exc_info else None
    return not isinstance(exc, (KeyboardInterrupt, *USER_ERRORS))


def run_job(name, run, argv):
    """Runs one job's `run(argv)`: user errors give one line and exit code 2, an
    interrupt (Ctrl-C) one line and 130; the staged output is removed either way."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("apache_beam.runners.common").addFilter(_not_reported_below)
    try:
        run(argv)
    except USER_ERRORS as e:
        print(f"embedflow {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"embedflow {name}: interrupted; nothing was published", file=sys.stderr)
        return 130
    except RuntimeError as e:
        if not _interrupted(e):
            raise
        print(f"embedflow {name}: interrupted; nothing was published", file=sys.stderr)
        return 130
    except SystemExit as e:  # argparse's --help and usage errors
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    return 0


def main(name, run):
    """`if __name__ == "__main__": main("corpus", run)` at the end of a job module."""
    exit_now(run_job(name, run, sys.argv[1:]))
