"""How a job's process starts and ends, shared by `embedflow` and `python -m jobs.X`.

A process that ran a tf.Transform pipeline can crash at interpreter exit inside
protobuf's upb garbage collection (protocolbuffers/protobuf#22067) even after
complete success, so every entry point ends through `exit_now`, which flushes and
leaves with the real status through `os._exit`.

SIGTERM (how Kubernetes and Vertex AI stop a worker, a grace period before SIGKILL)
stops a job as Ctrl-C does, with exit status 143. A job that must stop at a point of
its own choosing (the trainer, between steps, after a checkpoint) runs inside
`cooperating()` and polls `stop_requested()`. Python runs signal handlers only between
bytecodes, so a process blocked in native code (a collective waiting for a peer) would
never see the signal: a watchdog thread, woken through the signal wakeup fd, ends the
process with status 143 once `TERM_GRACE_SECONDS` (default 20,
$EMBEDFLOW_TERM_GRACE_SECONDS) have passed without the job stopping itself.
"""

import contextlib
import logging
import os
import signal
import sys
import threading

USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError)
TERM_STATUS = 128 + signal.SIGTERM
TERM_GRACE_SECONDS = float(os.environ.get("EMBEDFLOW_TERM_GRACE_SECONDS", "20"))
_STOP = threading.Event()
_MODE = {"cooperative": False, "installed": False}


class Terminated(Exception):
    """The process was asked to stop (SIGTERM)."""


def stop_requested():
    """True once SIGTERM arrived."""
    return _STOP.is_set()


@contextlib.contextmanager
def cooperating():
    """Within the block SIGTERM only sets `stop_requested()`: the caller stops by itself
    (and raises `Terminated`)."""
    before = _MODE["cooperative"]
    _MODE["cooperative"] = True
    if _MODE["installed"] and threading.current_thread() is threading.main_thread():
        # TensorFlow's coordination service (MultiWorkerMirroredStrategy) installs a
        # SIGTERM handler of its own when the strategy starts: take the signal back.
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        _MODE["cooperative"] = before


def _on_sigterm(signum, frame):  # pylint: disable=unused-argument
    _STOP.set()
    if not _MODE["cooperative"]:
        raise Terminated("stopped by SIGTERM")


def _watchdog(read_fd):
    while True:
        data = os.read(read_fd, 64)
        if not data or signal.SIGTERM in data:
            break
    _STOP.set()
    threading.Event().wait(TERM_GRACE_SECONDS)
    logging.error("no clean stop %.0f s after SIGTERM: exiting now", TERM_GRACE_SECONDS)
    exit_now(TERM_STATUS)


def install_sigterm_handler():
    """SIGTERM -> `Terminated` (or `stop_requested()`), and an exit after the grace period.
    Call from the main thread; once per process."""
    if _MODE["installed"] or threading.current_thread() is not threading.main_thread():
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    threading.Thread(target=_watchdog, args=(read_fd,), daemon=True, name="sigterm-watchdog").start()
    _MODE["installed"] = True


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
    return not isinstance(exc, (KeyboardInterrupt, Terminated, *USER_ERRORS))


def run_job(name, run, argv):
    """Runs one job's `run(argv)`: user errors give one line and exit code 2, an
    interrupt (Ctrl-C) one line and 130, SIGTERM one line and 143; the staged output is
    removed in every case."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("apache_beam.runners.common").addFilter(_not_reported_below)
    install_sigterm_handler()
    try:
        run(argv)
    except SystemExit as e:  # argparse's --help and usage errors
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except BaseException as e:  # pylint: disable=broad-except
        return _report(name, e)
    return 0


def _report(name, error):
    """One line for an error a user can act on, and the exit status; re-raises the rest."""
    if stop_requested():
        # Whatever the SIGTERM interrupted may have wrapped it in another exception.
        shown = str(error) if isinstance(error, Terminated) else "stopped by SIGTERM"
        print(f"embedflow {name}: {shown}; nothing was published", file=sys.stderr)
        return TERM_STATUS
    if isinstance(error, KeyboardInterrupt) or (isinstance(error, RuntimeError) and _interrupted(error)):
        print(f"embedflow {name}: interrupted; nothing was published", file=sys.stderr)
        return 130
    if isinstance(error, USER_ERRORS):
        print(f"embedflow {name}: error: {error}", file=sys.stderr)
        return 2
    raise error


def main(name, run):
    """`if __name__ == "__main__": main("corpus", run)` at the end of a job module."""
    exit_now(run_job(name, run, sys.argv[1:]))
