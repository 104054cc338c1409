"""Evaluation throughput: ``components.evaluate.executor.evaluate`` end to end on the DirectRunner, with a profile.

Each run evaluates a candidate with a served baseline (two models scored on the same rows,
TFMA over both, the gate, the report), timed by wall clock from the call to its return. The
table gives rows/s per eval size and DirectRunner mode, and each stage's seconds: scoring
(both SavedModels through serving_default), TFMA (Beam pipeline, start-up included), the
exact-AUC pass, and the report; and the CPU seconds the run used (this process and Beam's
worker processes), which on a shared machine says what the wall clock cannot: two cores
running only this would take about CPU s / 2. Target (issue 10): >= 5,000 rows/s end to end
at 1M rows.

Data: ``--ingest-dir`` is an ``esmm ingest`` output; its eval split is cut to each --rows
size once, into --work-dir/eval_<rows>/eval/. Models: ``--model`` (the candidate) and
``--baseline`` (pushed into a fresh serving base as version 1). For example:

    esmm simulate --out D/sim --rows 2000000 && esmm ingest --input D/sim --out D/ingest
    esmm simulate --out D/sim_small --seed 3 && esmm ingest --input D/sim_small --out D/ingest_small
    esmm transform --ingest-dir D/ingest_small --out D/tf && esmm train --transform-dir D/tf --out D/a  (twice)
    .venv/bin/python benchmarks/bench_eval.py --ingest-dir D/ingest --model D/b/model/V --baseline D/a/model/V \\
        [--rows 100000 1000000] [--modes multi_processing in_memory] [--work-dir /tmp/esmm_bench_eval]

--profile ROWS instead profiles one in_memory evaluation of ROWS rows on every thread
(Beam runs bundles on worker threads), in process CPU seconds, and gives each part's
inclusive time: model inference, TFMA's extractors, its metric preprocessing and combiners,
the whole TFMA pipeline (Beam start-up included), the exact AUCs, the report.
"""
from __future__ import annotations

import argparse
import cProfile
import logging
import os
import pstats
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components import console  # noqa: E402

console.quiet_process()  # before TensorFlow or Beam load; ESMM_VERBOSE=1 shows their lines

import tensorflow as tf  # noqa: E402

from components.evaluate.executor import evaluate  # noqa: E402
from esmm_model.config import load_config  # noqa: E402
from esmm_model.contracts import layout  # noqa: E402
from load_average import load_avg  # noqa: E402

MODES = {
    "multi_processing": ["--runner=DirectRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=2"],
    "in_memory": ["--runner=DirectRunner", "--direct_running_mode=in_memory"],
}
TARGET_ROWS_PER_S = 5_000
# Profile parts: a function (file fragment, function name) whose inclusive time is that part's.
PARTS = {
    "model inference (score_split)": ("components/evaluate/executor.py", "score_split"),
    "TFMA: features extractor": ("extractors/features_extractor.py", "extract_features"),
    "TFMA: labels extractor": ("extractors/labels_extractor.py", "extract_labels"),
    "TFMA: predictions extractor": ("extractors/materialized_predictions_extractor.py", "rekey_predictions"),
    "TFMA: slice key extractor": ("extractors/slice_key_extractor.py", "process"),
    "TFMA: metric preprocessing": ("evaluators/metrics_plots_and_validations_evaluator.py", "process"),
    "TFMA: metric combiners (add_input)": ("evaluators/metrics_plots_and_validations_evaluator.py", "add_input"),
    "TFMA: whole pipeline (run_tfma)": ("components/evaluate/executor.py", "run_tfma"),
    "exact AUCs (model_metrics)": ("components/evaluate/executor.py", "model_metrics"),
    "report and plots (write_report)": ("components/evaluate/report.py", "write_report"),
}


def eval_subset(ingest_dir: str, rows: int, work_dir: Path) -> Path:
    """``rows`` eval examples of ``ingest_dir`` in ingestion's layout (cut once, then reused)."""
    out = work_dir / f"eval_{rows}"
    done = out / "ROWS"
    if done.exists() and int(done.read_text()) == rows:
        return out
    shutil.rmtree(out, ignore_errors=True)
    subset = layout.IngestLayout(str(out))
    (out / layout.EVAL).mkdir(parents=True)
    files = sorted(tf.io.gfile.glob(layout.IngestLayout(ingest_dir).split_pattern(layout.EVAL)))
    written = 0
    with tf.io.TFRecordWriter(subset.split_prefix(layout.EVAL) + "-00000-of-00001" + layout.RECORD_SUFFIX,
                              options="GZIP") as writer:
        for record in tf.data.TFRecordDataset(files, compression_type="GZIP").take(rows):
            writer.write(record.numpy())
            written += 1
    if written < rows:
        raise SystemExit(f"{ingest_dir} has only {written:,} eval rows, fewer than {rows:,}")
    counts = layout.IngestLayout(ingest_dir).counts
    if os.path.exists(counts):
        shutil.copy(counts, subset.counts)
    done.write_text(str(rows))
    return out


def serving_base(baseline: str, work_dir: Path) -> Path:
    """A serving base holding ``baseline`` as version 1 of the config's model."""
    base = work_dir / "serving"
    version = base / "esmm" / "1"
    if not (version / "saved_model.pb").exists():
        shutil.rmtree(base, ignore_errors=True)
        shutil.copytree(baseline, version)
    return base


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (Beam's worker processes), user + system."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def timed(config, args, data: Path, base: Path, mode: str, out: Path):
    shutil.rmtree(out, ignore_errors=True)
    before, cpu = load_avg(), cpu_seconds()
    started = time.perf_counter()
    result = evaluate(config, args.model, str(data), str(out), MODES[mode], serving_base=str(base))
    return time.perf_counter() - started, cpu_seconds() - cpu, result, before, load_avg()


def benchmark(args, config) -> None:
    work = Path(args.work_dir)
    base = serving_base(args.baseline, work)
    print("| rows | DirectRunner mode | seconds | rows/s | CPU s | rows per CPU s | score s | TFMA s | exact AUCs s | "
          "report s | load before | load after |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for rows in args.rows:
        data = eval_subset(args.ingest_dir, rows, work)
        for mode in args.modes:
            seconds, cpu, result, before, after = timed(config, args, data, base, mode, work / f"out_{rows}_{mode}")
            t = result.timings
            count = int(result.metrics["ctr"]["all"]["example_count"])
            assert count == rows, f"TFMA counted {count:,} rows, expected {rows:,}"
            assert result.metrics["baseline"]["ctr"]["all"]["example_count"] == rows
            print(f"| {rows:,} | {mode}{' x2' if mode == 'multi_processing' else ''} | {seconds:.1f} | "
                  f"{rows / seconds:,.0f} | {cpu:.1f} | {rows / cpu:,.0f} | "
                  f"{t['score']:.1f} | {t['tfma']:.1f} | {t['exact']:.1f} | {t['report']:.1f} | "
                  f"{before} | {after} |", flush=True)
    print(f"target: >= {TARGET_ROWS_PER_S:,} rows/s end to end at 1M rows")


class _AllThreads:
    """cProfile on the calling thread and on every thread started while active (Beam's workers), timed in
    process CPU seconds: on a shared machine wall time measures the neighbours, CPU time measures us."""

    def __init__(self) -> None:
        self.profiles: list[cProfile.Profile] = []

    def _start_in_thread(self, *_) -> None:
        threading.setprofile(None)
        profile = cProfile.Profile(time.process_time)
        self.profiles.append(profile)
        profile.enable()

    def __enter__(self):
        threading.setprofile(self._start_in_thread)
        self._start_in_thread()
        return self

    def __exit__(self, *exc) -> None:
        threading.setprofile(None)
        for profile in self.profiles:
            profile.disable()


def profile(args, config) -> None:
    work = Path(args.work_dir)
    base = serving_base(args.baseline, work)
    data = eval_subset(args.ingest_dir, args.profile, work)
    out = work / f"profile_{args.profile}"
    shutil.rmtree(out, ignore_errors=True)
    before = load_avg()
    started = time.perf_counter()
    with _AllThreads() as threads:
        result = evaluate(config, args.model, str(data), str(out), MODES["in_memory"], serving_base=str(base))
    wall = time.perf_counter() - started
    stats = pstats.Stats(threads.profiles[0])
    for extra in threads.profiles[1:]:
        stats.add(extra)
    inclusive: dict[str, float] = {}
    for (filename, _, function), (_, _, _, cumulative, _) in stats.stats.items():
        for part, (fragment, name) in PARTS.items():
            if function == name and filename.endswith(fragment):
                inclusive[part] = inclusive.get(part, 0.0) + cumulative
    print(f"profile: in_memory evaluation of {args.profile:,} rows, two models; wall {wall:.1f} s "
          f"({args.profile / wall:,.0f} rows/s under the profiler); load {before} -> {load_avg()}")
    print("stage timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in result.timings.items()))
    print("| part | CPU seconds (inclusive) |\n|---|---|")
    for part in PARTS:
        print(f"| {part} | {inclusive.get(part, 0.0):.2f} |")
    if args.top:
        stats.sort_stats("tottime").print_stats(args.top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ingest-dir", required=True, help="an `esmm ingest` output whose eval split is cut to --rows")
    parser.add_argument("--model", required=True, help="the candidate SavedModel directory")
    parser.add_argument("--baseline", required=True,
                        help="the SavedModel served as version 1 (re-scored as the baseline)")
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--modes", nargs="+", choices=sorted(MODES), default=["multi_processing", "in_memory"])
    parser.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "esmm_bench_eval"))
    parser.add_argument("--config", default="simulator",
                        help="a shipped config name or a YAML path (default: %(default)s)")
    parser.add_argument("--profile", type=int, metavar="ROWS",
                        help="profile one in_memory evaluation of ROWS rows instead")
    parser.add_argument("--top", type=int, default=0, help="with --profile, also print the top N functions by own time")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    config = load_config(args.config)
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    (profile if args.profile else benchmark)(args, config)


if __name__ == "__main__":
    main()
