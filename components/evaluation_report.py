"""The evaluation report a person reads: metric tables (Markdown, HTML) and plots (PNG)."""
from __future__ import annotations

import base64
import html
import math
import os
from typing import Any

import numpy as np
import tensorflow as tf

from components import layout
from esmm_model.config import LABEL_CLICK, LABEL_CONVERSION, LABEL_CTCVR

OUTPUTS = ("ctr", "cvr", "ctcvr")
SLICES = ("all", "clicked", "unclicked")
COLUMNS = ("auc", "pr_auc", "bce", "mean_prediction", "mean_label", "example_count")
LABEL_OF = {"ctr": LABEL_CLICK, "cvr": LABEL_CONVERSION, "ctcvr": LABEL_CTCVR}


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1:
        return f"{int(value):,}"
    return f"{value:.4f}" if isinstance(value, float) else f"{value:,}"


def metric_rows(metrics: dict[str, Any]) -> list[list[str]]:
    rows = []
    for output in OUTPUTS:
        for slice_name in SLICES:
            values = metrics.get(output, {}).get(slice_name)
            if values:
                rows.append([output, slice_name, *(_fmt(values.get(c)) for c in COLUMNS)])
    return rows


def headline_rows(metrics: dict[str, Any]) -> list[list[str]]:
    """The paper's figures: exact AUCs, entire-space CVR AUC, and the oracle ceilings."""
    exact = metrics.get("exact", {})
    space = metrics.get("entire_space", {})
    rows = [["CTR AUC, all impressions", _fmt(exact.get("ctr_auc")), _fmt(space.get("oracle_ctr_auc_all"))],
            ["CTCVR AUC, all impressions", _fmt(exact.get("ctcvr_auc")), _fmt(space.get("oracle_ctcvr_auc_all"))],
            ["CVR AUC, clicked impressions", _fmt(exact.get("cvr_auc_clicked")), _fmt(space.get("oracle_cvr_auc_clicked"))]]
    if space:
        rows.append(["CVR AUC, entire space (vs would_convert)", _fmt(space.get("cvr_auc")), _fmt(space.get("oracle_cvr_auc"))])
    return rows


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def markdown_tables(metrics: dict[str, Any]) -> str:
    return (_markdown(["metric", "model", "oracle"], headline_rows(metrics)) + "\n\n"
            + _markdown(["output", "slice", *COLUMNS], metric_rows(metrics)))


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-scores, kind="stable")
    y = labels[order].astype(bool)
    tps, fps = np.cumsum(y), np.cumsum(~y)
    return np.concatenate([[0.0], fps / max(fps[-1], 1)]), np.concatenate([[0.0], tps / max(tps[-1], 1)])


def calibration_curve(labels: np.ndarray, scores: np.ndarray, bins: int = 15) -> tuple[np.ndarray, np.ndarray]:
    """Mean prediction and observed rate per equal-count bin of the prediction."""
    order = np.argsort(scores, kind="stable")
    chunks = [c for c in np.array_split(order, min(bins, len(order))) if len(c)]
    return np.array([scores[c].mean() for c in chunks]), np.array([labels[c].mean() for c in chunks])


def write_plots(pred, plot_dir: str) -> list[str]:
    """One ROC and one calibration PNG per output, a line per slice where both classes occur."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tf.io.gfile.makedirs(plot_dir)
    labels = pred.labels()
    written = []
    for output in OUTPUTS:
        y, scores = labels[output].astype(np.float64), getattr(pred, output).astype(np.float64)
        fig, (roc_ax, cal_ax) = plt.subplots(1, 2, figsize=(11, 4.5))
        for slice_name, mask in pred.slices().items():
            ys, ss = y[mask], scores[mask]
            if ys.size == 0:
                continue
            if 0 < ys.sum() < ys.size:
                fpr, tpr = roc_curve(ys, ss)
                roc_ax.plot(fpr, tpr, label=f"{slice_name} (n={ys.size:,})")
            mean_pred, rate = calibration_curve(ys, ss)
            cal_ax.plot(mean_pred, rate, marker="o", label=slice_name)
        roc_ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
        roc_ax.set(title=f"ROC: {output} vs {LABEL_OF[output]}", xlabel="false positive rate", ylabel="true positive rate")
        top = max(float(scores.max()) if scores.size else 1.0, 1e-3)
        cal_ax.plot([0, top], [0, top], color="grey", linestyle=":")
        cal_ax.set(title=f"Calibration: {output}", xlabel="mean prediction (equal-count bins)", ylabel="observed rate")
        for ax in (roc_ax, cal_ax):
            ax.legend(loc="best", fontsize=8)
            ax.grid(alpha=0.3)
        fig.tight_layout()
        path = os.path.join(plot_dir, f"{output}.png")
        with tf.io.gfile.GFile(path, "wb") as f:
            fig.savefig(f, format="png", dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def _base64(path: str) -> str:
    """The PNG inline, so report.html stands alone (the kfp UI shows it as one file)."""
    with tf.io.gfile.GFile(path, "rb") as f:
        return base64.b64encode(f.read()).decode("ascii")


def write_report(metrics: dict[str, Any], pred, out_dir: str) -> None:
    """report.md, report.html and plots/<output>.png under out_dir."""
    paths = layout.EvaluationLayout(out_dir)
    plots = write_plots(pred, paths.plots)
    tables = markdown_tables(metrics)
    images = "\n".join(f"![{os.path.basename(p)}](plots/{os.path.basename(p)})" for p in plots)
    with tf.io.gfile.GFile(paths.report_markdown, "w") as f:
        f.write(f"# ESMM evaluation\n\n{tables}\n\n{images}\n")
    page = ("<html><head><meta charset='utf-8'><title>ESMM evaluation</title><style>"
            "body{font-family:sans-serif} td,th{padding:2px 10px;border-bottom:1px solid #ddd;text-align:right}"
            "</style></head><body><h1>ESMM evaluation</h1>"
            + _html_table(["metric", "model", "oracle"], headline_rows(metrics))
            + "<h2>Per output and slice (TFMA)</h2>"
            + _html_table(["output", "slice", *COLUMNS], metric_rows(metrics))
            + "".join(f"<h2>{os.path.basename(p)[:-4]}</h2><img src='data:image/png;base64,{_base64(p)}'>" for p in plots)
            + "</body></html>")
    with tf.io.gfile.GFile(paths.report_html, "w") as f:
        f.write(page)
