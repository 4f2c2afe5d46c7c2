"""The `embedflow` command: one subcommand per job.

A process that ran a tf.Transform pipeline can crash at interpreter exit inside
protobuf's upb garbage collection (protocolbuffers/protobuf#22067) even after
complete success, so every entry point ends through `exit_now`, which flushes and
leaves with the real status through `os._exit`.
"""

import importlib
import logging
import os
import sys

# subcommand -> ("module" whose run(argv) runs it, or "module:function"; one-line help)
COMMANDS = {
    "corpus": ("pipelines.corpus", "text files -> vocabulary + skip-gram windows (Beam + tf.Transform)"),
    "digits": ("pipelines.digits", "32x32 digit images -> examples (Beam) -> MLP such as 1024-512-10"),
    "sentiment": ("pipelines.sentiment", "labelled text -> corpus token ids (Beam) -> averaged-embedding classifier"),
    "train": ("trainer.skipgram", "skip-gram with negative sampling on CPU, GPU or TPU (tf.distribute)"),
    "evaluate": ("trainer.evaluate", "analogy accuracy and word-similarity Spearman of trained vectors"),
    "neighbors": ("trainer.evaluate:run_neighbors", "nearest neighbours of words by cosine"),
    "run": ("embedflow.run", "the whole chain into a versioned run, a report, promotion by quality gates"),
}

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


def run_job(name, run, argv):
    """Runs one job's `run(argv)`, turning user errors into a message and exit code 2."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run(argv)
    except USER_ERRORS as e:
        print(f"embedflow {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except SystemExit as e:  # argparse's --help and usage errors
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    return 0


def _usage():
    lines = ["usage: embedflow COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`embedflow COMMAND --help` describes a command's options."]
    return "\n".join(lines)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        exit_now(0 if argv else 2)
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"embedflow: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        exit_now(2)
    module_name, _, function = COMMANDS[name][0].partition(":")
    module = importlib.import_module(module_name)
    exit_now(run_job(name, getattr(module, function or "run"), rest))


if __name__ == "__main__":
    main()
