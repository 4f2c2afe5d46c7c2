"""The report of one run: report.md and report.html, with PNG plots in report/.

Plots (matplotlib, Agg backend):
    report/training_loss.png      loss per pair against training progress, from the
                                  embeddings' info.json (`training.loss_curve`:
                                  [[step, progress, loss], ...])
    report/analogy_pairs.png      country-capital and male-female pairs of the analogy set,
                                  projected on two principal components, an arrow a pair
                                  (evaluation/pairs.json; runs without it: report/pca.png,
                                  the most frequent words, from evaluation/pca.json)
    report/confusion_matrix.png   copied from the digits stage
    report/sentiment_learning_curve.png   copied from the sentiment stage
The report leads with the verdict (promoted or not, and the failed gates), where the
vectors came from (imported: the file, its format, words kept, folded and dropped, the
coverage share; trained: the model, from the embeddings' info.json), and the headline
metrics with their change against the promoted run; then tables of stages
(ran or reused, fingerprint, seconds), every metric against the promoted run's and the
gates, analogy sections, nearest neighbours of the probe words, and the plots.
Works on gs:// run directories: plots are drawn locally, then written through Beam's
FileSystems.
"""

import html
import io
import json
import math

from apache_beam.io.filesystems import FileSystems

from core import outputs
from schemas import imports as imports_schema
from schemas.runs import IMPORT_STAGE, STAGE_DIRS

REPORT_DIR = "report"
LOSS_PLOT = "training_loss.png"
PCA_PLOT = "pca.png"
PAIRS_PLOT = "analogy_pairs.png"
HEADLINE = ("analogy_accuracy", "similarity_spearman", "digit_accuracy", "sentiment_accuracy",
            "sentiment_scratch_accuracy")
CONFUSION_PLOT = "confusion_matrix.png"
SENTIMENT_PLOT = "sentiment_learning_curve.png"
# (stage directory, file in it) -> name in report/
COPIED_PLOTS = {("digits", "confusion_matrix.png"): CONFUSION_PLOT,
                ("sentiment", "learning_curve.png"): SENTIMENT_PLOT}
PCA_LABELS = 60  # label only the most frequent words: 300 labels would be unreadable
# Trained outputs written before info.json named the model were skip-gram without subwords.
DEFAULT_MODEL = {"family": "skipgram", "subwords": None}
MODEL_NAMES = {"skipgram": "skip-gram", "cbow": "CBOW"}


def _pyplot():
    import matplotlib  # pylint: disable=import-outside-toplevel

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    return plt


def _save(fig, path):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    with FileSystems.create(path) as f:
        f.write(buf.getvalue())


def _read_json(path):
    if not FileSystems.exists(path):
        return None
    return json.loads(outputs.read_text(path))


def plot_loss(curve, path):
    """Loss per pair against progress; returns False when there is no finite point."""
    points = [(p, loss) for _, p, loss in curve if loss is not None and math.isfinite(loss)]
    if not points:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([100 * p for p, _ in points], [loss for _, loss in points], marker="o", markersize=3)
    ax.set_xlabel("training progress (% of corpus words x epochs)")
    ax.set_ylabel("loss per pair")
    ax.set_title("skip-gram training loss")
    ax.grid(alpha=0.3)
    _save(fig, path)
    return True


def plot_pca(pca, path):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 6))
    xs = [x for x, _ in pca["xy"]]
    ys = [y for _, y in pca["xy"]]
    ax.scatter(xs, ys, s=6, alpha=0.5)
    for word, x, y in list(zip(pca["words"], xs, ys))[:PCA_LABELS]:
        ax.annotate(word, (x, y), fontsize=7)
    ev = pca.get("explained_variance", [0, 0])
    ax.set_xlabel(f"PC1 ({100 * ev[0]:.1f}% of variance)")
    ax.set_ylabel(f"PC2 ({100 * ev[1]:.1f}% of variance)")
    ax.set_title(f"PCA of the {len(xs)} most frequent words (labels: top {min(PCA_LABELS, len(xs))})")
    _save(fig, path)


def plot_pairs(pairs, path):
    """One panel per group of analogy pairs: an arrow from each pair's first word to its second."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(pairs), figsize=(6.5 * len(pairs), 5.5), squeeze=False)
    for ax, (group, data) in zip(axes[0], sorted(pairs.items())):
        xy = data["xy"]
        for a, b in data["pairs"]:
            (x0, y0), (x1, y1) = xy[a], xy[b]
            ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                        arrowprops={"arrowstyle": "->", "color": "grey", "alpha": 0.6})
            ax.scatter([x0], [y0], color="tab:blue", s=14)
            ax.scatter([x1], [y1], color="tab:red", s=14)
            ax.annotate(a, (x0, y0), fontsize=8, color="tab:blue")
            ax.annotate(b, (x1, y1), fontsize=8, color="tab:red")
        ev = data.get("explained_variance", [0, 0])
        ax.set_xlabel(f"PC1 ({100 * ev[0]:.1f}% of variance)")
        ax.set_ylabel(f"PC2 ({100 * ev[1]:.1f}% of variance)")
        first, second = group.split("-", 1)
        ax.set_title(f"{group}: {len(data['pairs'])} pairs, {first} (blue) -> {second} (red)")
        ax.grid(alpha=0.3)
    _save(fig, path)


def _fmt(value, digits=4):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _curve_table(curve, adaptation=None):
    """The sentiment learning curve: accuracy mean +- std per size, and the gap."""
    def cell(point):
        return "-" if point is None else f"{100 * point['mean']:.1f}% +- {100 * point['std']:.1f}"

    scratch = curve.get("scratch") or [None] * len(curve["size_names"])
    rows = []
    for name, pre, scr in zip(curve["size_names"], curve["pretrained"], scratch):
        gap = "-" if scr is None else f"{100 * (pre['mean'] - scr['mean']):+.1f} points"
        rows.append([name, cell(pre), cell(scr), gap])
    units = len(curve["pretrained"][0].get("values", [])) if curve["pretrained"] else 0
    adapted = (f"; pretrained vectors adapted to each fold's training texts, without their labels, "
               f"for {adaptation['epochs']} epochs" if adaptation else "")
    return (f"Sentiment learning curve (mean +- std over {units} folds or splits{adapted})",
            ["training texts", "pretrained", "scratch", "pretrained - scratch"], rows)


def _tables(summary, evaluation, neighbors, sentiment=None):
    """The report's tables as (title, header, rows)."""
    tables = []
    rows = []
    for stage, record in summary["stages"].items():
        rows.append([stage, record["status"], record.get("from_run", ""), record["fingerprint"][:12],
                     _fmt(record.get("seconds"), 1)])
    tables.append(("Stages", ["stage", "status", "reused from", "fingerprint", "seconds"], rows))

    latest = summary.get("latest_metrics") or {}
    thresholds = {}
    for g in summary["gates"]:
        thresholds.setdefault(g["metric"], []).append(g)
    rows = []
    for metric, value in sorted(summary["metrics"].items()):
        gates = thresholds.get(metric, [])
        gate_text = "; ".join(f"{g['gate']} >= {_fmt(g['threshold'])}: {'pass' if g['passed'] else 'FAIL'}"
                              for g in gates)
        rows.append([metric, _fmt(value), _fmt(latest.get(metric)), gate_text])
    tables.append(("Metrics", ["metric", "this run", "latest", "gates"], rows))

    failed = [g for g in summary["gates"] if not g["passed"]]
    rows = [[g["gate"], g["metric"], _fmt(g["value"]), _fmt(g["threshold"]), "pass" if g["passed"] else "FAIL",
             g.get("note", "")] for g in summary["gates"]]
    if rows:
        tables.append((f"Gates ({len(failed)} failed)", ["gate", "metric", "value", "threshold", "result",
                                                          "note"], rows))

    if evaluation and "analogies" in evaluation:
        rows = [[name, _fmt(s["accuracy"]), f"{s['correct']}/{s['total']}", s["questions"]]
                for name, s in evaluation["analogies"]["sections"].items()]
        tables.append(("Analogy sections", ["section", "accuracy", "correct", "questions"], rows))
    if sentiment and sentiment.get("learning_curve"):
        tables.append(_curve_table(sentiment["learning_curve"], sentiment.get("adaptation")))
    if neighbors:
        rows = [[word, ", ".join(f"{w} ({s:.2f})" for w, s in near)]
                for word, near in neighbors.get("neighbors", {}).items()]
        rows += [[word, "(not in the vocabulary)"] for word in neighbors.get("missing", [])]
        tables.append(("Nearest neighbours", ["word", "neighbours (cosine)"], rows))
    return tables


def _markdown(title, header, rows):
    def cell(x):
        return str(x).replace("|", "\\|")
    lines = [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _html_table(title, header, rows):
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(x))}</td>" for x in row) + "</tr>" for row in rows)
    return f"<h2>{html.escape(title)}</h2>\n<table><tr>{head}</tr>{body}</table>\n"


def _count(n):
    return "-" if n is None else f"{n:,}"


def _stage_text(record):
    if not record:
        return "-"
    return f"reused from run {record['from_run']}" if record.get("status") == "reused" else record["status"]


def _imported(info, record):
    """(line, rows) of vectors imported by `embedflow import-vectors`."""
    source, words = info.get("source", {}), info.get("words", {})
    path = info.get("inputs", {}).get("vectors")
    coverage = info.get("coverage")
    dropped = ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in words.get("dropped_by_reason", {}).items() if v)
    share = None
    if coverage and coverage.get("share") is not None:
        share = f"{100 * coverage['share']:.1f}% of the {coverage['tokens']:,} tokens of {coverage['file']}"
    line = (f"Vectors: imported from {path} ({source.get('format')}, {info.get('dim')} dimensions): "
            f"{_count(words.get('kept'))} words kept of {_count(words.get('read'))} read, "
            f"{_count(words.get('folded'))} folded onto another token, {_count(words.get('dropped'))} dropped"
            + (f"; they cover {share}." if share else "."))
    rows = [["source file", path], ["format", source.get("format")], ["dimensions", info.get("dim")],
            ["words read", _count(words.get("read"))],
            ["words kept", f"{_count(words.get('kept'))} ({_count(words.get('kept_folded'))} of them folded)"],
            ["words folded onto another token",
             f"{_count(words.get('folded'))} ({_count(words.get('merged'))} merged into an earlier row)"],
            ["words dropped", f"{_count(words.get('dropped'))}" + (f" ({dropped})" if dropped else "")],
            ["coverage", share if share else "not measured (set inputs.pretrained_coverage_text)"],
            ["stage", f"{IMPORT_STAGE}: {_stage_text(record)}"]]
    return line, rows


def _trained(info, record):
    """(line, rows) of vectors trained by `embedflow train`."""
    model = info.get("model") or DEFAULT_MODEL
    family = MODEL_NAMES.get(model.get("family"), str(model.get("family")))
    sub = model.get("subwords")
    subwords = (f"character {sub.get('min_n')}-{sub.get('max_n')}-grams in {_count(sub.get('buckets'))} buckets"
                if sub else "none")
    params = info.get("parameters", {})
    corpus = info.get("inputs", {}).get("corpus")
    line = (f"Vectors: trained, {family} ({'subwords: ' + subwords if sub else 'no subwords'}), "
            f"{params.get('dim')} dimensions, {params.get('epochs')} epoch{'' if params.get('epochs') == 1 else 's'}, "
            f"{_count(info.get('vocab_size'))} words.")
    rows = [["model", family], ["subwords", subwords], ["dimensions", params.get("dim")],
            ["epochs", params.get("epochs")], ["words", _count(info.get("vocab_size"))],
            ["corpus", corpus], ["warm start from", params.get("init_from") or "-"],
            ["stage", f"train: {_stage_text(record)}"]]
    return line, rows


def provenance(info, records):
    """Where the run's vectors came from, from the embeddings' info.json.

    Args:
      info: the embeddings output's info.json (an import's or a training's), or None.
      records: the run's stage records.

    Returns:
      (one line for the headline area, ("Vectors", header, rows)), or (None, None) when the
      run has no embeddings.
    """
    if info is None:
        return None, None
    if info.get("job") == imports_schema.JOB:
        line, rows = _imported(info, records.get(IMPORT_STAGE))
    else:
        line, rows = _trained(info, records.get("train"))
    return line, ("Vectors", ["", "value"], rows)


def _plots(run_dir, plots_dir):
    """Draws or copies every plot into `plots_dir`; returns ([(caption, file)], [notes])."""
    plots, notes = [], []
    train_info = _read_json(outputs.join(run_dir, STAGE_DIRS["train"], "info.json"))
    curve = (train_info or {}).get("training", {}).get("loss_curve", [])
    if plot_loss(curve, outputs.join(plots_dir, LOSS_PLOT)):
        plots.append(("Training loss", LOSS_PLOT))
    elif (train_info or {}).get("job") == imports_schema.JOB:
        notes.append("Training loss: none, the vectors were imported, not trained.")
    else:
        notes.append("Training loss: no finite loss was logged.")
    pairs = _read_json(outputs.join(run_dir, STAGE_DIRS["evaluate"], "pairs.json"))
    pca = _read_json(outputs.join(run_dir, STAGE_DIRS["evaluate"], "pca.json"))
    if pairs:
        plot_pairs(pairs, outputs.join(plots_dir, PAIRS_PLOT))
        plots.append(("Analogy pairs, 2D PCA of each group's vectors", PAIRS_PLOT))
    elif pca:
        plot_pca(pca, outputs.join(plots_dir, PCA_PLOT))
        plots.append(("Frequent words, 2D PCA", PCA_PLOT))
    for (stage_dir, name), target in COPIED_PLOTS.items():
        source = outputs.join(run_dir, stage_dir, name)
        if FileSystems.exists(source):
            FileSystems.copy([source], [outputs.join(plots_dir, target)])
            title = "Digit confusion matrix (eval set)" if stage_dir == "digits" else "Sentiment learning curve"
            plots.append((title, target))
        else:
            notes.append(f"{stage_dir}: no {name} (stage skipped or not run)")
    return plots, notes


def _verdict(summary):
    """(one line: promoted or not and why, the headline table)."""
    promotion = summary["promotion"]
    failed = [g for g in summary["gates"] if not g["passed"]]
    if promotion.get("promoted"):
        verdict = "Promoted: every gate passed and `latest` names this run"
    elif promotion.get("passed"):
        verdict = "Every gate passed (this step did not promote)"
    else:
        verdict = "NOT promoted, `latest` is unchanged: " + "; ".join(
            f"{g['gate']} failed ({g['metric']} {_fmt(g['value'])} < {_fmt(g['threshold'])})" for g in failed)
    verdict += f" (previous latest: {promotion.get('previous_latest') or 'none'})."
    latest = summary.get("latest_metrics") or {}
    rows = []
    for metric in HEADLINE:
        value, old = summary["metrics"].get(metric), latest.get(metric)
        if value is None:
            continue
        change = "-" if old is None else f"{100 * (value - old):+.2f} points"
        rows.append([metric, _fmt(value), _fmt(old), change])
    return verdict, ("Headline metrics", ["metric", "this run", "latest", "change"], rows)


def write_report(run_dir, summary):
    """Writes report.md, report.html and report/*.png into `run_dir`.

    Args:
      run_dir: the run directory (local or gs://).
      summary: dict with run, stages, metrics, gates, promotion, config, latest_metrics.

    Returns:
      the path of report.md.
    """
    plots_dir = outputs.join(run_dir, REPORT_DIR)
    if not outputs.is_remote(plots_dir):
        import os  # pylint: disable=import-outside-toplevel

        os.makedirs(plots_dir, exist_ok=True)
    plots, notes = _plots(run_dir, plots_dir)
    evaluation = _read_json(outputs.join(run_dir, STAGE_DIRS["evaluate"], "metrics.json"))
    neighbors = _read_json(outputs.join(run_dir, STAGE_DIRS["evaluate"], "neighbors.json"))
    verdict, headline = _verdict(summary)
    origin, vectors = provenance(_read_json(outputs.join(run_dir, STAGE_DIRS["train"], "info.json")),
                                 summary["stages"])
    sentiment = _read_json(outputs.join(run_dir, STAGE_DIRS["sentiment"], "metrics.json"))
    tables = [headline] + ([vectors] if vectors else []) + _tables(summary, evaluation, neighbors, sentiment)
    title = f"embedflow run {summary['run']}"

    md = [f"# {title}", "", f"**{verdict}**", ""] + ([origin, ""] if origin else [])
    for table in tables:
        md.append(_markdown(*table))
    for caption, name in plots:
        md += [f"## {caption}", "", f"![{caption}]({REPORT_DIR}/{name})", ""]
    md += [f"- {n}" for n in notes]
    outputs.write_text(outputs.join(run_dir, "report.md"), "\n".join(md) + "\n")

    style = ("body{font-family:sans-serif;max-width:1000px;margin:2em auto}"
             "table{border-collapse:collapse;margin-bottom:1em}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:90%}"
             "img{max-width:100%;height:auto}")  # wide plots shrink to the page instead of overflowing it
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>",
             f"<p><b>{html.escape(verdict)}</b></p>"] + ([f"<p>{html.escape(origin)}</p>"] if origin else [])
    parts += [_html_table(*table) for table in tables]
    parts += [f"<h2>{html.escape(c)}</h2><img src='{REPORT_DIR}/{n}' alt='{html.escape(c)}'>" for c, n in plots]
    parts += ["<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>" if notes else "",
              "</body></html>\n"]
    outputs.write_text(outputs.join(run_dir, "report.html"), "\n".join(parts))
    return outputs.join(run_dir, "report.md")
