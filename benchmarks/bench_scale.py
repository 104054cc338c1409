"""Scale-out benchmark: how the Beam steps' wall time grows with rows and DirectRunner workers.

Each measurement is a function returning ``Measurement`` rows; ``print_table`` prints any of
them, so another section (training with 1 and 2 workers, say) adds a function and a
``--sections`` entry, nothing else.

- ``ingest``: ``components.ingest.executor.ingest`` on the simulator's default preset, at each --rows
  size, with ``--direct_running_mode=multi_processing --direct_num_workers=N`` for each
  --workers N (raw data simulated once into --work-dir/raw_<rows>_seed<seed>, reused).
- ``transform``: ``components.transform.executor.transform`` on that ingest output, the same way.
- ``train``: ``esmm train`` (2 epochs) on that transform output as one process without
  TF_CONFIG, and as N processes of a loopback MultiWorkerMirroredStrategy cluster (TF_CONFIG,
  one free port each) for each --workers N > 1; rows are the examples trained (rows x epochs),
  and the note gives the chief's last-epoch examples/s from its metrics.json.

Wall clock from the step call to its return (Beam start-up included), the load average
beside each figure, and the exact-count checks the steps themselves make. The closing
lines give the time ratio between the largest and the smallest size per step and worker
count (the cost per row as rows grow; 10x the rows should cost <= 11x the time), and the
speed-up of N workers over 1.

What two cores can show: that the steps scale linearly in rows, and that a second worker
process gives at most ~2x (less when the machine is shared). What they cannot show: speed-up
past two workers (a second trainer process on the same two cores shares them with the first,
and all-reduces over loopback), or any distributed runner's behaviour (shuffle over a network, worker
start-up, stragglers); that takes a cluster (see docs/scale-out.md).

    .venv/bin/python benchmarks/bench_scale.py [--rows 100000 1000000] [--workers 1 2]
        [--sections ingest transform train] [--work-dir /tmp/esmm_bench_scale] [--seed 7]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components import console  # noqa: E402

console.quiet_process()  # before TensorFlow or Beam load; ESMM_VERBOSE=1 shows their lines


from benchmarks.bench_ingest import simulated  # noqa: E402
from components.ingest.executor import ingest  # noqa: E402
from components.train.distribution import loopback_addresses  # noqa: E402
from components.transform.executor import transform  # noqa: E402
from esmm_model.config import Config, config_from_dict, load_config  # noqa: E402
from esmm_model.contracts import layout  # noqa: E402
from load_average import load_avg  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TRAIN_EPOCHS = 2

MAX_COST_RATIO = 1.1  # time ratio / rows ratio allowed between the largest and smallest size


@dataclass(frozen=True)
class Measurement:
    """One timed run: which step, how many rows and workers, the wall time and the load around it."""

    section: str
    rows: int
    workers: int
    seconds: float
    load_before: str
    load_after: str
    note: str = ""


def direct_args(workers: int) -> list[str]:
    return ["--runner=DirectRunner", "--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]


def timed(section: str, rows: int, workers: int, run: Callable[[], str]) -> Measurement:
    """Runs ``run`` (which returns a note) and times it, with the load average before and after."""
    before = load_avg()
    started = time.perf_counter()
    note = run()
    seconds = time.perf_counter() - started
    m = Measurement(section, rows, workers, seconds, before, load_avg(), note)
    print(f"{section:<10} {rows:>9,} rows  {workers} worker(s)  {seconds:8.1f} s  {rows / seconds:>8,.0f} rows/s  "
          f"load {m.load_before} -> {m.load_after}  {note}", flush=True)
    return m


def ingest_dir(work_dir: Path, rows: int, workers: int) -> Path:
    return work_dir / f"ingest_{rows}_w{workers}"


def measure_ingest(config: Config, work_dir: Path, sizes: list[int], workers: list[int],
                   seed: int) -> list[Measurement]:
    """Ingestion wall time per size and worker count."""
    results = []
    for rows in sizes:
        raw = simulated(config, rows, seed, work_dir)
        for n in workers:
            out = ingest_dir(work_dir, rows, n)
            shutil.rmtree(out, ignore_errors=True)

            def run(out=out, raw=raw, n=n) -> str:
                counts = ingest(config, str(raw), str(out), direct_args(n))
                return f"train {counts.split('train')['rows']:,} + eval {counts.split('eval')['rows']:,}"
            results.append(timed("ingest", rows, n, run))
    return results


def measure_transform(config: Config, work_dir: Path, sizes: list[int], workers: list[int],
                      seed: int) -> list[Measurement]:
    """tf.Transform wall time per size and worker count, on an ingest output of that size (made if missing)."""
    results = []
    for rows in sizes:
        source = next((ingest_dir(work_dir, rows, n) for n in workers
                       if Path(layout.IngestLayout(str(ingest_dir(work_dir, rows, n))).counts).is_file()), None)
        if source is None:
            source = ingest_dir(work_dir, rows, max(workers))
            shutil.rmtree(source, ignore_errors=True)
            ingest(config, str(simulated(config, rows, seed, work_dir)), str(source), direct_args(max(workers)))
        for n in workers:
            out = work_dir / f"transform_{rows}_w{n}"
            shutil.rmtree(out, ignore_errors=True)

            def run(out=out, n=n) -> str:
                transform(config, str(source), str(out), direct_args(n))
                return "rows written == ingestion's counts"
            results.append(timed("transform", rows, n, run))
    return results


def train_processes(config_path: Path, transform_root: Path, out: Path, workers: int) -> None:
    """`esmm train` as one plain process, or as ``workers`` loopback MultiWorkerMirrored processes."""
    addresses = loopback_addresses(workers) if workers > 1 else []
    procs = []
    for index in range(max(workers, 1)):
        env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
        if addresses:
            env["TF_CONFIG"] = json.dumps({"cluster": {"worker": addresses},
                                           "task": {"type": "worker", "index": index}})
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "pipelines.cli", "train", "--config", str(config_path),
             "--transform-dir", str(transform_root), "--out", str(out)],
            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        outputs = [proc.communicate()[0] for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    for proc, output in zip(procs, outputs):
        if proc.returncode != 0:
            raise SystemExit(f"esmm train failed ({proc.returncode}):\n{output[-3000:]}")


def measure_train(config: Config, work_dir: Path, sizes: list[int], workers: list[int],
                  seed: int) -> list[Measurement]:
    """Trainer wall time with 1 process and with N loopback workers, on the smallest size's transform."""
    rows = min(sizes)
    transformed = next((work_dir / f"transform_{rows}_w{n}" for n in workers
                        if (work_dir / f"transform_{rows}_w{n}" / "transformed").is_dir()), None)
    if transformed is None:
        measure_transform(config, work_dir, [rows], [max(workers)], seed)
        transformed = work_dir / f"transform_{rows}_w{max(workers)}"
    data = config.to_dict()
    data["training"]["epochs"] = TRAIN_EPOCHS
    config_path = work_dir / "train_config.yaml"
    config_path.write_text(yaml.safe_dump(config_from_dict(data).to_dict()))
    counts = json.loads(next(work_dir.glob(f"ingest_{rows}_w*/counts.json")).read_text())
    examples = counts["train"]["rows"] * TRAIN_EPOCHS
    results = []
    for n in workers:
        out = work_dir / f"train_{rows}_w{n}"
        shutil.rmtree(out, ignore_errors=True)

        def run(out=out, n=n) -> str:
            train_processes(config_path, transformed, out, n)
            history = json.loads((out / "metrics.json").read_text())["history"]
            return f"chief's last epoch {history[-1]['examples_per_second']:,.0f} ex/s"
        results.append(timed("train", examples, n, run))
    return results


SECTIONS = {"ingest": measure_ingest, "transform": measure_transform, "train": measure_train}


def print_table(results: list[Measurement]) -> None:
    """The table of every measurement, then the cost ratio as rows grow and the speed-up of more workers."""
    header = (f"{'step':<10} {'rows':>10} {'workers':>7} {'seconds':>8} {'rows/s':>8}  "
              f"{'load before -> after':<34} note")
    print(f"\nDirectRunner (FnApiRunner, multi_processing), {os.cpu_count()} CPUs; wall clock per step call")
    print(header)
    print("-" * len(header))
    for m in results:
        print(f"{m.section:<10} {m.rows:>10,} {m.workers:>7} {m.seconds:8.1f} {m.rows / m.seconds:>8,.0f}  "
              f"{m.load_before + ' -> ' + m.load_after:<34} {m.note}")
    by_key = {(m.section, m.rows, m.workers): m.seconds for m in results}
    for section in dict.fromkeys(m.section for m in results):
        sizes = sorted({m.rows for m in results if m.section == section})
        workers = sorted({m.workers for m in results if m.section == section})
        small, big = sizes[0], sizes[-1]
        for n in workers:
            if big > small and (section, small, n) in by_key and (section, big, n) in by_key:
                ratio = by_key[(section, big, n)] / by_key[(section, small, n)]
                bound = MAX_COST_RATIO * big / small
                print(f"{section}, {n} worker(s): {big:,} rows cost {ratio:.1f}x the time of {small:,} "
                      f"({'within' if ratio <= bound else 'OVER'} the {bound:.0f}x bound)")
        for rows in sizes:
            if (section, rows, 1) in by_key:
                for n in workers[1:]:
                    if (section, rows, n) in by_key:
                        speedup = by_key[(section, rows, 1)] / by_key[(section, rows, n)]
                        print(f"{section}, {rows:,} rows: {n} workers run {speedup:.2f}x as fast as 1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--sections", nargs="+", choices=sorted(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "esmm_bench_scale"))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--config", default="simulator")
    args = parser.parse_args()
    config = load_config(args.config)
    work_dir = Path(args.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    print(f"load average at start: {load_avg()}", flush=True)
    results: list[Measurement] = []
    for rows in sorted(set(args.rows)):  # smallest size first, every section: the small table comes early
        for section in args.sections:
            results += SECTIONS[section](config, work_dir, [rows], sorted(set(args.workers)), args.seed)
        print_table(results)


if __name__ == "__main__":
    main()
