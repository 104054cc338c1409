"""The evaluation report a person acts on: verdict, candidate vs baseline, data, training, plots.

``report.md`` and ``report.html`` (self-contained, plots inlined, so the kfp UI shows it as one
file) hold, in order: the blessing verdict and every check; the model and data evaluated
(version, train/eval rows, clicks, conversions, rejected rows); the paper's headline AUCs
with the oracle; candidate vs the served baseline on the same rows, per output and slice;
the training curves; ROC and calibration plots (``plots/<output>.png``, ``plots/training.png``).
"""
from __future__ import annotations

import base64
import html
import math
import os
from typing import Any, Optional

import numpy as np
import tensorflow as tf

from esmm_model.config import LABEL_CLICK, LABEL_CONVERSION, LABEL_CTCVR
from esmm_model.contracts import layout
from esmm_model.metrics import roc_points
from esmm_model.schema import OUTPUTS

SLICES = ("all", "clicked", "unclicked")
COLUMNS = ("auc", "pr_auc", "bce", "mean_prediction", "mean_label", "example_count")
COMPARED = ("auc", "pr_auc", "bce", "mean_prediction")
LABEL_OF = {"ctr": LABEL_CLICK, "cvr": LABEL_CONVERSION, "ctcvr": LABEL_CTCVR}
CVR_ALL_NOTE = ("`cvr/all` scores pCVR against `conversion` over all impressions, i.e. against unconditional "
                "conversion (a conversion needs a click), not against would-convert; the paper's CVR AUC is "
                "`cvr/clicked`, and the entire-space CVR AUC (vs the simulator's would_convert) is in the headline.")
ROC_POINTS = 400
CALIBRATION_BINS = 20


def _fmt(value: Any, count: bool = False) -> str:
    """A metric with four decimals; a count (an int, or ``count``) with thousands separators; n/a if undefined."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if count or isinstance(value, int):
        return f"{int(value):,}"
    return f"{value:.4f}"


def _signed(value: Optional[float]) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:+.4f}"


def metric_rows(metrics: dict[str, Any]) -> list[list[str]]:
    rows = []
    for output in OUTPUTS:
        for slice_name in SLICES:
            values = metrics.get(output, {}).get(slice_name)
            if values:
                rows.append([output, slice_name, *(_fmt(values.get(c), c == "example_count") for c in COLUMNS)])
    return rows


def headline_rows(metrics: dict[str, Any]) -> list[list[str]]:
    """The paper's figures: exact AUCs, entire-space CVR AUC, and the oracle ceilings."""
    exact = metrics.get("exact", {})
    space = metrics.get("entire_space", {})
    rows = [["CTR AUC, all impressions", _fmt(exact.get("ctr_auc")), _fmt(space.get("oracle_ctr_auc_all"))],
            ["CTCVR AUC, all impressions", _fmt(exact.get("ctcvr_auc")), _fmt(space.get("oracle_ctcvr_auc_all"))],
            ["CVR AUC, clicked impressions", _fmt(exact.get("cvr_auc_clicked")),
             _fmt(space.get("oracle_cvr_auc_clicked"))]]
    if space:
        rows.append(["CVR AUC, entire space (vs would_convert)", _fmt(space.get("cvr_auc")),
                     _fmt(space.get("oracle_cvr_auc"))])
    return rows


def comparison_rows(metrics: dict[str, Any]) -> list[list[str]]:
    """Candidate, baseline and change (candidate - baseline) per output, slice and metric, on the same rows."""
    baseline = metrics.get("baseline") or {}
    rows = []
    for output in OUTPUTS:
        for slice_name in SLICES:
            ours = metrics.get(output, {}).get(slice_name) or {}
            theirs = baseline.get(output, {}).get(slice_name) or {}
            cells = []
            for column in COMPARED:
                a, b = ours.get(column), theirs.get(column)
                change = a - b if isinstance(a, (int, float)) and isinstance(b, (int, float)) else None
                cells += [_fmt(a), _fmt(b), _signed(change)]
            rows.append([output, slice_name, *cells])
    return rows


def comparison_header() -> list[str]:
    return ["output", "slice", *(f"{c} {who}" for c in COMPARED for who in ("candidate", "baseline", "change"))]


def data_rows(metrics: dict[str, Any]) -> list[list[str]]:
    """Train/eval rows, clicks, conversions and rejected rows from ingestion; the rows evaluated."""
    data = metrics.get("data") or {}
    ingest = data.get("ingest") or {}
    rows = []
    for split in ("train", "eval"):
        counts = ingest.get(split)
        if counts:
            rows.append([split, *(_fmt(counts.get(k), count=True) for k in ("rows", "clicks", "conversions"))])
    rows.append(["evaluated",
                 *(_fmt(data.get(k), count=True) for k in ("eval_rows", "eval_clicks", "eval_conversions"))])
    rejected = ingest.get("rejected")
    if rejected is not None:
        detail = ", ".join(f"{code} {n:,}" for code, n in sorted(rejected.items()))
        rows.append(["rejected", _fmt(sum(rejected.values()), count=True), detail or "-", ""])
    return rows


def presence_rows(metrics: dict[str, Any]) -> list[list[str]]:
    """Per configured feature, and per input field no feature reads, the share of the train and eval rows
    carrying it, from ingestion's counts (none when ingestion counted no presence)."""
    ingest = (metrics.get("data") or {}).get("ingest") or {}
    presence, unused = ingest.get("presence") or {}, ingest.get("unused_fields") or {}
    rows = {split: (ingest.get(split) or {}).get("rows", 0) for split in ("train", "eval")}

    def share(counts: dict, split: str, name: str) -> str:
        return f"{(counts.get(split) or {}).get(name, 0) / rows[split]:.1%}" if rows[split] else "n/a"

    names = list(dict.fromkeys(name for split in ("train", "eval") for name in presence.get(split) or {}))
    fields = sorted({name for split in ("train", "eval") for name in unused.get(split) or {}})
    return ([[name, share(presence, "train", name), share(presence, "eval", name)] for name in names]
            + [[f"field {name} (unused)", share(unused, "train", name), share(unused, "eval", name)]
               for name in fields])


def model_lines(metrics: dict[str, Any]) -> list[str]:
    """Which models were compared: the candidate's path and variant, the baseline's served version."""
    model = metrics.get("model") or {}
    baseline = metrics.get("baseline")
    history = model.get("history") or []
    lines = [f"candidate: {model.get('path', 'n/a')} (variant {model.get('variant', 'n/a')}, "
             f"{len(history)} epochs, step {history[-1].get('step') if history else 'n/a'})"]
    if baseline:
        lines.append(f"baseline: served version {baseline['version']} ({baseline['path']}), re-scored on the same "
                     f"eval rows; a push makes the candidate version {baseline['version'] + 1}")
    else:
        lines.append("baseline: none served yet; a push makes the candidate version 1")
    return lines


def training_rows(metrics: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Per epoch: train loss and the trainer's eval metrics (exact AUCs, log losses)."""
    history = (metrics.get("model") or {}).get("history") or []
    keys = [k for k in ("train_loss", "ctr_auc", "ctcvr_auc", "cvr_auc_clicked", "ctr_logloss", "ctcvr_logloss")
            if any(k in entry for entry in history)]
    return ["epoch", "step", *keys], [[str(e.get("epoch")), _fmt(e.get("step"), count=True),
                                       *(_fmt(e.get(k)) for k in keys)]
                                      for e in history]


def verdict_lines(blessing) -> list[str]:
    return [blessing.describe().splitlines()[0], *(f"- {reason}" for reason in blessing.reasons)]


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def markdown_tables(metrics: dict[str, Any], *, slices: bool = True) -> str:
    """The headline, per output and slice (unless not ``slices``) and, with a served baseline, candidate vs
    baseline."""
    text = _markdown(["metric", "model", "oracle"], headline_rows(metrics))
    if slices:
        text += "\n\n" + _markdown(["output", "slice", *COLUMNS], metric_rows(metrics))
    if metrics.get("baseline"):
        text += (f"\n\nCandidate vs served version {metrics['baseline']['version']}, on the same eval rows:\n\n"
                 + _markdown(comparison_header(), comparison_rows(metrics)))
    return text


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def calibration_curve(labels: np.ndarray, scores: np.ndarray,
                      bins: int = CALIBRATION_BINS) -> tuple[np.ndarray, np.ndarray]:
    """Mean prediction and observed rate per quantile bin of the prediction (equal counts)."""
    order = np.argsort(scores, kind="stable")
    chunks = [c for c in np.array_split(order, min(bins, len(order))) if len(c)]
    return np.array([scores[c].mean() for c in chunks]), np.array([labels[c].mean() for c in chunks])


def thin_index(size: int, points: int = ROC_POINTS) -> np.ndarray:
    """At most ``points`` indices spread evenly over ``size`` curve points, the first and the last included."""
    return np.unique(np.linspace(0, size - 1, min(points, size)).astype(int))


def write_plots(scores, plot_dir: str) -> list[str]:
    """Per output: ROC and calibration (log axes, quantile bins), a line per model and slice where both
    classes occur (a slice with one label value has neither curve nor calibration)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tf.io.gfile.makedirs(plot_dir)
    labels = scores.labels()
    written = []
    styles = {"candidate": "-", "baseline": "--"}
    for output in OUTPUTS:
        y = labels[output]
        fig, (roc_ax, cal_ax) = plt.subplots(1, 2, figsize=(12, 5))
        lows = []
        for model, by_output in scores.outputs.items():
            predicted = by_output[output].astype(np.float64)
            for slice_name, mask in scores.slices().items():
                ys, ss = y[mask], predicted[mask]
                if not 0 < ys.sum() < ys.size:
                    continue
                label = f"{model} {slice_name} (n={ys.size:,})"
                fpr, tpr, _ = roc_points(ys, ss)
                index = thin_index(fpr.size)
                roc_ax.plot(fpr[index], tpr[index], linestyle=styles.get(model, "-"), label=label)
                mean_pred, rate = calibration_curve(ys.astype(np.float64), ss)
                shown = (mean_pred > 0) & (rate > 0)
                cal_ax.plot(mean_pred[shown], rate[shown], marker="o", markersize=3, linestyle=styles.get(model, "-"),
                            label=label)
                lows.append(float(min(mean_pred[shown].min(initial=1.0), rate[shown].min(initial=1.0))))
        roc_ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
        roc_ax.set(title=f"ROC: {output} vs {LABEL_OF[output]}", xlabel="false positive rate",
                   ylabel="true positive rate")
        low = max(min(lows, default=1e-4) / 2, 1e-6)
        cal_ax.plot([low, 1], [low, 1], color="grey", linestyle=":")
        cal_ax.set(xscale="log", yscale="log", title=f"Calibration: {output} ({CALIBRATION_BINS} quantile bins)",
                   xlabel="mean prediction", ylabel="observed rate")
        for ax in (roc_ax, cal_ax):
            ax.legend(loc="best", fontsize=7)
            ax.grid(alpha=0.3, which="both")
        written.append(_save(fig, os.path.join(plot_dir, f"{output}.png")))
        plt.close(fig)
    return written


def write_training_plot(metrics: dict[str, Any], plot_dir: str) -> Optional[str]:
    """Train loss and the trainer's eval AUCs per epoch; None when the model carries no history."""
    history = (metrics.get("model") or {}).get("history") or []
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tf.io.gfile.makedirs(plot_dir)
    epochs = [e["epoch"] for e in history]
    fig, (loss_ax, auc_ax) = plt.subplots(1, 2, figsize=(12, 4))
    loss_ax.plot(epochs, [e.get("train_loss") for e in history], marker="o")
    loss_ax.set(title="train loss", xlabel="epoch")
    for key in ("ctr_auc", "ctcvr_auc", "cvr_auc_clicked"):
        if any(key in e for e in history):
            auc_ax.plot(epochs, [e.get(key) for e in history], marker="o", label=key)
    auc_ax.set(title="eval AUC per epoch (trainer)", xlabel="epoch")
    auc_ax.legend(loc="best", fontsize=8)
    for ax in (loss_ax, auc_ax):
        ax.grid(alpha=0.3)
    path = _save(fig, os.path.join(plot_dir, "training.png"))
    plt.close(fig)
    return path


def _save(fig, path: str) -> str:
    fig.tight_layout()
    with tf.io.gfile.GFile(path, "wb") as f:
        fig.savefig(f, format="png", dpi=90)
    return path


def _base64(path: str) -> str:
    """The PNG inline, so report.html stands alone (the kfp UI shows it as one file)."""
    with tf.io.gfile.GFile(path, "rb") as f:
        return base64.b64encode(f.read()).decode("ascii")


def write_report(metrics: dict[str, Any], scores, blessing, out_dir: str) -> None:
    """report.md, report.html and plots/*.png under out_dir."""
    paths = layout.EvaluationLayout(out_dir)
    plot_dir = paths.plots
    training_plot = write_training_plot(metrics, plot_dir)
    plots = write_plots(scores, plot_dir) + ([training_plot] if training_plot else [])
    training_header, training = training_rows(metrics)
    baseline = metrics.get("baseline")
    sections = [
        ("Verdict", "\n".join(verdict_lines(blessing)), None),
        ("Models", "\n".join(f"- {line}" for line in model_lines(metrics)), None),
        ("Data", _markdown(["split", "rows", "clicks", "conversions"], data_rows(metrics)),
         (["split", "rows", "clicks", "conversions"], data_rows(metrics))),
    ]
    presence = presence_rows(metrics)
    if presence:
        sections.append(("Input field presence (rows carrying it)", _markdown(["feature", "train", "eval"], presence),
                         (["feature", "train", "eval"], presence)))
    sections += [
        ("Headline (exact AUCs over the whole split)", _markdown(["metric", "model", "oracle"], headline_rows(metrics)),
         (["metric", "model", "oracle"], headline_rows(metrics))),
    ]
    if baseline:
        sections.append((f"Candidate vs served version {baseline['version']}, same eval rows",
                         _markdown(comparison_header(), comparison_rows(metrics)),
                         (comparison_header(), comparison_rows(metrics))))
    sections.append(("Candidate per output and slice",
                     _markdown(["output", "slice", *COLUMNS], metric_rows(metrics)) + "\n\n" + CVR_ALL_NOTE,
                     (["output", "slice", *COLUMNS], metric_rows(metrics))))
    if training:
        sections.append(("Training (per epoch)", _markdown(training_header, training), (training_header, training)))
    markdown = "# ESMM evaluation\n\n" + "\n\n".join(f"## {title}\n\n{text}" for title, text, _ in sections)
    markdown += "\n\n" + "\n".join(f"![{os.path.basename(p)}](plots/{os.path.basename(p)})" for p in plots) + "\n"
    with tf.io.gfile.GFile(paths.report_markdown, "w") as f:
        f.write(markdown)
    body = []
    for title, text, table in sections:
        body.append(f"<h2>{html.escape(title)}</h2>")
        if table is None:
            items = "".join(f"<li>{html.escape(line.lstrip('- '))}</li>" for line in text.splitlines())
            body.append(f"<ul>{items}</ul>")
        else:
            body.append(_html_table(*table))
    body.append(f"<p>{html.escape(CVR_ALL_NOTE)}</p>")
    body += [f"<h2>{os.path.basename(p)[:-4]}</h2><img src='data:image/png;base64,{_base64(p)}'>" for p in plots]
    page = ("<html><head><meta charset='utf-8'><title>ESMM evaluation</title><style>"
            "body{font-family:sans-serif} td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}"
            f"</style></head><body><h1>ESMM evaluation: {html.escape(blessing.status)}</h1>"
            + "".join(body) + "</body></html>")
    with tf.io.gfile.GFile(paths.report_html, "w") as f:
        f.write(page)
