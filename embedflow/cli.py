"""The `embedflow` command: one subcommand per job (each job module's `run(argv)`).

Every entry point ends through `core.main.exit_now` (see there why).
"""

import importlib
import sys

from core.main import exit_now, run_job

# subcommand -> ("module" whose run(argv) runs it, or "module:function"; one-line help)
COMMANDS = {
    "corpus": ("jobs.corpus", "text files -> vocabulary + skip-gram windows (Beam + tf.Transform)"),
    "digits": ("jobs.digits", "32x32 digit images -> examples (Beam) -> MLP such as 1024-512-10"),
    "sentiment": ("jobs.sentiment", "labelled text -> corpus token ids (Beam) -> averaged-embedding classifier"),
    "train": ("jobs.train", "skip-gram with negative sampling on CPU, GPU or TPU (tf.distribute)"),
    "evaluate": ("jobs.evaluate", "analogy accuracy and word-similarity Spearman of trained vectors"),
    "neighbors": ("jobs.evaluate:run_neighbors", "nearest neighbours of words by cosine"),
    "import-vectors": ("jobs.import_vectors",
                       "word2vec/GloVe/fastText vectors -> embeddings output + its tokenizer graph"),
    "run": ("embedflow.run", "the whole chain into a versioned run, a report, promotion by quality gates"),
}

def _usage():
    lines = ["usage: embedflow COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<15} {help_}" for name, (_, help_) in COMMANDS.items()]
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
