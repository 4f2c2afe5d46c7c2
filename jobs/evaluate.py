"""Evaluate job: analogy accuracy, word-similarity Spearman, neighbours, a 2D projection.

    embedflow evaluate --embeddings DIR [--analogies FILE] [--similarity FILE ...] [--json]
                       [--output FILE] [--output-dir DIR [--probe-word W ...] [--topn 8]
                       [--pca-words 300]]
    embedflow neighbors --embeddings DIR [--topn 10] [--json] WORD [WORD ...]

The measures are defined in `trainer/evaluate.py`. With `--output-dir` the job
publishes an evaluation output (the `evaluate` stage of `embedflow run`):

    metrics.json     analogies (overall and per section) and similarity, as printed, and
                     "model": the embeddings' model as their info.json records it
                     ({"family", "subwords"}; null for vectors not trained by embedflow)
    neighbors.json   {"neighbors": {word: [[neighbour, cosine], ...]}, "missing": [...]}
                     for every --probe-word
    pca.json         {"words", "xy", "explained_variance"}: the --pca-words most
                     frequent words projected on their first two principal components
    pairs.json       with --analogies: country-capital and male-female word pairs of the
                     analogy set, each group's words projected on the first two
                     principal components of their unit vectors ({group: {"pairs",
                     "xy", "explained_variance"}}); the report draws them as arrows
    info.json        inputs, parameters, the headline metrics; COMPLETED last
"""

import json
import sys

import numpy as np

from core import outputs
from core.main import main
from core.params import Params, new_parser, param, parse_all
from schemas import embeddings as schema
from trainer.evaluate import analogy_pairs, evaluate, project_pairs, read_analogies
from trainer.vectors import WordVectors


class EvaluateParams(Params):
    """`embedflow evaluate`'s parameters; the `evaluate` section of a run config."""

    embeddings: str = param(help="embedflow train output", metavar="DIR", config=False)
    analogies: str | None = param(None, help="analogy questions, questions-words format",
                                  metavar="FILE", config=False)
    similarity: list[str] = param([], repeat=True, metavar="FILE", config=False,
                                  help="word pairs with human scores, WordSim-353 format (repeatable)")
    restrict_vocab: int = param(30000, ge=1, help="answer analogies from this many most frequent words")
    output: str | None = param(None, metavar="FILE", config=False, help="also write the JSON here")
    output_dir: str | None = param(None, metavar="DIR", config=False,
                                   help="publish an evaluation output here (metrics, neighbours, PCA)")
    probe_words: list[str] = param([], flag="--probe-word", repeat=True, metavar="WORD",
                                   help="with --output-dir: list this word's neighbours (repeatable)")
    topn: int = param(8, ge=1, help="with --output-dir: neighbours per probe word")
    pca_words: int = param(300, ge=2, help="with --output-dir: most frequent words in the 2D projection")
    print_json: bool = param(False, flag="--json", config=False, help="print JSON")


PARAMS = EvaluateParams


def parse_args(argv):
    parser = EvaluateParams.add_flags(new_parser("embedflow evaluate", "Evaluate word vectors."))
    params = parse_all(EvaluateParams, parser, argv)
    if not params.analogies and not params.similarity:
        raise ValueError("give --analogies FILE and/or --similarity FILE")
    if params.output_dir:
        outputs.check_output_path(params.output_dir, "--output-dir")
    return params


def load_embeddings(directory, flag="--embeddings"):
    """The vectors of a complete train output; refuses non-finite ones."""
    outputs.require_completed(directory, flag, schema.PRODUCER)
    vectors = WordVectors.load(directory)
    bad = int((~np.isfinite(vectors.vectors).all(axis=1)).sum())
    if bad:
        raise ValueError(f"{flag} {directory}: {bad} of {len(vectors)} vectors hold NaN or infinite "
                         "values: the training diverged (train again with a lower --learning-rate "
                         "or --batch-size)")
    return vectors


def model_of(directory):
    """The model of a train output as its info.json records it ("model"), or None.

    Train outputs written before the key existed were all skip-gram without subwords;
    other embeddings outputs (`embedflow import-vectors`) were not trained here: None.
    """
    info = outputs.read_info(directory)
    if "model" in info:
        return info["model"]
    return {"family": "skipgram", "subwords": None} if info.get("job") == "train" else None


def run(argv=None):
    """Runs the evaluate job; returns the metrics."""
    params = parse_args(argv)
    vectors = load_embeddings(params.embeddings)
    result = evaluate(vectors, params.analogies, params.similarity, params.restrict_vocab)
    result["model"] = model_of(params.embeddings)
    text = json.dumps(result, indent=2, sort_keys=True)
    if params.output:
        outputs.write_text(params.output, text + "\n")
    if params.output_dir:
        publish(vectors, result, params)
    print(text if params.print_json else format_report(result))
    return result


def publish(vectors, metrics, params):
    """Writes the evaluation output of --output-dir (see the module docstring)."""
    with outputs.StagedOutput(params.output_dir, "--output-dir", inputs=[params.embeddings]) as out:
        neighbors = {w: vectors.most_similar(w, topn=params.topn)
                     for w in params.probe_words if w in vectors}
        missing = [w for w in params.probe_words if w not in vectors]
        n = min(params.pca_words, len(vectors))
        coords, explained = pca_2d(vectors.vectors[:n])
        pca = {"words": vectors.index_to_key[:n],
               "xy": [[round(float(x), 5), round(float(y), 5)] for x, y in coords],
               "explained_variance": explained}
        pairs = {}
        if params.analogies:
            groups = analogy_pairs(read_analogies(params.analogies), vectors,
                                   restrict_vocab=params.restrict_vocab)
            pairs = project_pairs(vectors, groups)
        for name, obj in (("metrics.json", metrics),
                          ("neighbors.json", {"neighbors": neighbors, "missing": missing}),
                          ("pca.json", pca), ("pairs.json", pairs)):
            outputs.write_json(outputs.join(out.path, name), obj)
        out.publish({"job": "evaluate",
                     "inputs": {"embeddings": params.embeddings, "analogies": params.analogies,
                                "similarity": params.similarity},
                     "parameters": {k: getattr(params, k) for k in EvaluateParams.config_keys()},
                     "metrics": summary_of_evaluation(metrics)})


def format_report(result):
    lines = []
    if "analogies" in result:
        a = result["analogies"]
        lines.append(f"analogies: {a['accuracy']:.2%} ({a['correct']}/{a['answered']}, "
                     f"coverage {a['coverage']:.1%} of {a['questions']}, top {a['restrict_vocab']} words)")
        for name, s in a["sections"].items():
            acc = "-" if s["accuracy"] is None else f"{s['accuracy']:.2%}"
            lines.append(f"  {name:<32} {acc:>8}  ({s['correct']}/{s['total']} of {s['questions']})")
    for name, s in result.get("similarity", {}).items():
        rho = "-" if s["spearman"] is None else f"{s['spearman']:.3f}"
        lines.append(f"similarity {name}: spearman {rho} over {s['covered']}/{s['pairs']} pairs")
    return "\n".join(lines)


class NeighborsParams(Params):
    """`embedflow neighbors`'s parameters."""

    embeddings: str = param(help="embedflow train output", metavar="DIR")
    topn: int = param(10, ge=1, help="neighbours per word")
    print_json: bool = param(False, flag="--json", help="print JSON")


def run_neighbors(argv=None):
    """Prints the nearest neighbours of the words given; returns them."""
    parser = NeighborsParams.add_flags(new_parser("embedflow neighbors", "Nearest neighbours by cosine."))
    parser.add_argument("words", nargs="+", metavar="WORD")
    args = parser.parse_args(argv)
    params = NeighborsParams.from_args(args)
    vectors = load_embeddings(params.embeddings)
    result = {}
    for word in args.words:
        try:
            result[word] = vectors.most_similar(word.lower(), topn=args.topn)
        except KeyError as e:
            raise ValueError(str(e.args[0])) from None
    if params.print_json:
        print(json.dumps(result, indent=2))
    else:
        for word, near in result.items():
            print(f"{word}: " + ", ".join(f"{w} ({s:.3f})" for w, s in near))
    sys.stdout.flush()
    return result


def pca_2d(vectors):
    """Rows projected on their first two principal components."""
    centred = vectors - vectors.mean(axis=0, keepdims=True)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    explained = (s[:2] ** 2 / max(float((s ** 2).sum()), 1e-12)).tolist()
    return centred @ vt[:2].T, explained


def summary_of_evaluation(metrics):
    summary = {}
    if "analogies" in metrics:
        summary["analogy_accuracy"] = metrics["analogies"]["accuracy"]
        summary["analogy_coverage"] = metrics["analogies"]["coverage"]
    for name, s in sorted(metrics.get("similarity", {}).items()):
        if s.get("spearman") is not None:
            summary.setdefault("similarity_spearman", s["spearman"])
    return summary


if __name__ == "__main__":
    main("evaluate", run)
