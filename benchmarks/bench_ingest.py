"""Ingestion throughput: ``components.ingest.executor.ingest`` end to end on the DirectRunner.

Data: the simulator's default preset and spec (10k users, 20k items) at each --rows size,
simulated once into --work-dir/raw_<rows>_seed<seed> (reused when its simulation.json
matches the spec). For each size and each --modes entry, ``ingest`` runs into a fresh
output directory and is timed by wall clock from the call to its return, Beam start-up,
both passes, worker processes and the final counts.json read included:

- multi_processing: ``--direct_running_mode=multi_processing --direct_num_workers=2``
  (the project's configured setting);
- in_memory: ``--direct_running_mode=in_memory`` (one process).

A --startup-rows run (default 1,000 rows) per mode estimates the fixed cost, so the
table shows how time grows with size. The counts check is train + eval + rejected ==
rows read == simulated rows. Target (issue 22): >= 50k rows/s end to end at 1M rows.

--profile N instead times ingestion's per-batch stages on N rows in one process, outside
Beam, in CPU seconds (read, pass 1 keys, common lines, columnar parse + join + encode,
framing, deflate, read-back count), then shows cProfile of the parse + join + encode stage.

    .venv/bin/python benchmarks/bench_ingest.py [--rows 100000 1000000] [--modes multi_processing in_memory]
        [--work-dir /tmp/esmm_bench_ingest] [--seed 7] [--startup-rows 1000] [--profile 50000]
"""
from __future__ import annotations

import argparse
import cProfile
import gzip
import io
import json
import logging
import os
import pstats
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components import console  # noqa: E402

console.quiet_process()  # before TensorFlow or Beam load; ESMM_VERBOSE=1 shows their lines


from isal import isal_zlib  # noqa: E402

from components.artifacts.record_counts import count_records  # noqa: E402
from components.beam.line_reader import ReadLineBatches, line_ranges  # noqa: E402
from components.beam.tfrecord_sink import GZIP_WBITS, frame_records  # noqa: E402
from components.devtools.simulator import COMMON_FILE, SKELETON_FILE, SimulationSpec, simulate  # noqa: E402
from components.ingest.columnar import ColumnarAliccp  # noqa: E402
from components.ingest.executor import EVAL, TRAIN, IngestCounts, ingest, resolve_inputs  # noqa: E402
from components.ingest.graph import BATCH_SIZE, GZIP_LEVEL, ExtractKeys, ParseCommon  # noqa: E402
from esmm_model.config import Config, load_config  # noqa: E402
from load_average import load_avg  # noqa: E402

MODES = {
    "multi_processing": ["--runner=DirectRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=2"],
    "in_memory": ["--runner=DirectRunner", "--direct_running_mode=in_memory"],
}
TARGET_ROWS_PER_S = 50_000


def simulated(config: Config, rows: int, seed: int, work_dir: Path) -> Path:
    """The raw Ali-CCP log for this size and seed, simulated unless already there."""
    return simulated_log(SimulationSpec.for_preset("baseline", rows=rows, seed=seed), config,
                         work_dir / f"raw_{rows}_seed{seed}")


def simulated_log(spec: SimulationSpec, config: Config, raw: Path) -> Path:
    """The raw log of ``spec`` in ``raw``, simulated unless one of the same spec is already there."""
    rows = spec.rows
    meta = raw / "simulation.json"
    if meta.is_file() and (raw / SKELETON_FILE).is_file() and (raw / COMMON_FILE).is_file():
        if json.loads(meta.read_text()).get("spec") == asdict(spec):
            print(f"reusing simulation {raw}", flush=True)
            return raw
    shutil.rmtree(raw, ignore_errors=True)
    started = time.perf_counter()
    simulate(spec, config, raw)
    print(f"simulated {rows:,} rows into {raw} in {time.perf_counter() - started:.1f} s", flush=True)
    return raw


def timed_ingest(config: Config, raw: Path, out: Path, mode: str) -> tuple[float, IngestCounts]:
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    counts = ingest(config, str(raw), str(out), MODES[mode])
    return time.perf_counter() - started, counts


def check(counts: IngestCounts, rows: int) -> str:
    written = counts.split(TRAIN)["rows"] + counts.split(EVAL)["rows"]
    rejected = sum(counts.rejected.values())
    ok = written + rejected == counts.rows_read == rows
    return (f"{'ok' if ok else 'MISMATCH'} ({counts.split(TRAIN)['rows']:,}+{counts.split(EVAL)['rows']:,}"
            f"+{rejected:,}={written + rejected:,} / read {counts.rows_read:,})")


def benchmark(args: argparse.Namespace, config: Config) -> None:
    work_dir = Path(args.work_dir)
    sizes = sorted(set(args.rows))
    raws = {n: simulated(config, n, args.seed, work_dir) for n in sorted({args.startup_rows, *sizes})}
    results = []
    for rows in [args.startup_rows, *sizes]:
        for mode in args.modes:
            before = load_avg()
            seconds, counts = timed_ingest(config, raws[rows], work_dir / f"ingest_{mode}", mode)
            after = load_avg()
            label = "startup" if rows == args.startup_rows and rows not in sizes else ""
            results.append((rows, mode, seconds, counts, before, after, label))
            print(f"{rows:>9,} {mode:<16} {seconds:8.1f} s  {rows / seconds:>9,.0f} rows/s  "
                  f"{check(counts, rows)}  load {before} -> {after}", flush=True)

    startup = {mode: s for rows, mode, s, *_ in results if rows == args.startup_rows}
    print("\nIngestion, DirectRunner, wall clock from the ingest() call to its return "
          f"(default simulator preset, seed {args.seed}, {os.cpu_count()} CPUs)")
    header = (f"{'rows':>9}  {'mode':<16} {'seconds':>8} {'rows/s':>9} {'rows/s excl. startup':>21}  "
              f"{'load before -> after':<32} counts check")
    print(header)
    print("-" * len(header))
    for rows, mode, seconds, counts, before, after, label in results:
        marginal = seconds - startup[mode]
        net = f"{rows / marginal:,.0f}" if not label and marginal > 0 else "-"
        print(f"{rows:>9,}  {mode:<16} {seconds:8.1f} {rows / seconds:>9,.0f} {net:>21}  {before + ' -> ' + after:<32} "
              f"{check(counts, rows)}{'  (start-up estimate)' if label else ''}")
    for mode, s in startup.items():
        print(f"fixed start-up estimate ({mode}): {s:.1f} s (the {args.startup_rows:,}-row run)")
    big = max(sizes)
    for rows, mode, seconds, *_ in results:
        if rows == big:
            verdict = "meets" if rows / seconds >= TARGET_ROWS_PER_S else "misses"
            print(f"target >= {TARGET_ROWS_PER_S:,} rows/s at {big:,} rows, {mode}: "
                  f"{rows / seconds:,.0f} rows/s ({verdict})")


def profile(args: argparse.Namespace, config: Config) -> None:
    """The per-batch stages of ingestion timed in one process, outside Beam (CPU seconds), then cProfile
    of the parse/join/encode stage."""
    work_dir = Path(args.work_dir)
    raw = simulated(config, args.profile, args.seed, work_dir)
    files = resolve_inputs(config, str(raw))
    stages: dict[str, float] = {}

    def stage(name, fn):
        started = time.process_time()
        result = fn()
        stages[name] = time.process_time() - started
        return result

    def read(pattern: str) -> list:
        reader = ReadLineBatches(config.input.max_line_bytes, BATCH_SIZE)
        return [batch for r in line_ranges(pattern) for batch in reader.process(r)]

    batches = stage("read lines (both passes read them)", lambda: read(files.impressions))
    common_batches = read(files.common)
    parse_common = ParseCommon(config)
    parse_common.setup()
    common = stage("parse + encode common lines", lambda: dict(
        item for b in common_batches for item in parse_common.process(b) if isinstance(item, tuple)))
    keys = ExtractKeys(config, files)
    keys.setup()
    stage("pass 1: sample_id and order key", lambda: [list(keys.process(b)) for b in batches])
    columnar = ColumnarAliccp(config)
    parsed = stage("pass 2: parse + join + encode (columnar)",
                   lambda: [columnar.parse(b.lines, common) for b in batches])
    runs = stage("pass 2: frame TFRecords", lambda: [frame_records(p.examples) for p in parsed])

    def deflate() -> int:
        compressor = isal_zlib.compressobj(GZIP_LEVEL, isal_zlib.DEFLATED, GZIP_WBITS)
        return sum(len(compressor.compress(r)) for r in runs) + len(compressor.flush())
    stage(f"pass 2: deflate (ISA-L level {GZIP_LEVEL})", deflate)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "data-00000-of-00001.tfrecord.gz")
        with open(path, "wb") as f:
            f.write(gzip.compress(b"".join(runs), compresslevel=1))
        stage("read-back count (ISA-L inflate, framing walk)", lambda: count_records(path))
    rows = sum(len(b) for b in batches)
    print(f"\nstages in one process, CPU seconds, {rows:,} lines in {len(batches)} batches, "
          f"{len(common):,} common lines, {sum(len(r) for r in runs) / rows:,.0f} framed bytes/row, "
          f"load {load_avg()}:")
    for name, s in stages.items():
        print(f"  {name:<44} {s:7.2f} s  {s / rows * 1e6:7.1f} us/row")
    print(f"  {'sum':<44} {sum(stages.values()):7.2f} s  {sum(stages.values()) / rows * 1e6:7.1f} us/row")

    prof = cProfile.Profile(timer=time.process_time)
    prof.enable()
    for b in batches:
        columnar.parse(b.lines, common)
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(20)
    print("\n--- parse + join + encode under cProfile, top 20 by own time ---\n" + buf.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--modes", nargs="+", choices=sorted(MODES), default=["multi_processing", "in_memory"])
    parser.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "esmm_bench_ingest"))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--startup-rows", type=int, default=1_000, help="tiny run estimating the fixed cost")
    parser.add_argument("--config", default="simulator")
    parser.add_argument("--profile", type=int, metavar="ROWS", help="profile an in_memory ingest of ROWS rows instead")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    config = load_config(args.config)
    print(f"load average at start: {load_avg()}", flush=True)
    if args.profile:
        profile(args, config)
    else:
        benchmark(args, config)
    print(f"load average at end: {load_avg()}", flush=True)


if __name__ == "__main__":
    main()
