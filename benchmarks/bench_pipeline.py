"""The whole pipeline end to end: ``esmm run`` (``pipelines.local_run.run_local``) on N Ali-CCP-format rows.

Data: the simulator's ``baseline`` story at Ali-CCP's rates (CTR 4 %, CVR 0.5 %) written for the shipped
``aliccp`` config (``--config`` to change both), N rows, simulated once into --work-dir/raw_<config>_<rows>_seed<seed>
(reused when its simulation.json matches the spec). The run is the shipped config as a user runs it:
kfp.local, the DirectRunner with the config's Beam options, the config's epochs unless --epochs, no
ground truth; the serving base and kfp root are fresh under --work-dir. Each step is timed by wall clock
from kfp.local's start of the task to its end (its subprocess start-up and imports included), and the
table gives each step's share and its rows/s over the N rows. The load average is printed at the start,
after the simulation and at the end. Target (issue 22): 1M rows, 4 epochs, <= 360 s on two cores.

    .venv/bin/python benchmarks/bench_pipeline.py [--rows 1000000] [--config aliccp] [--epochs 4]
        [--work-dir /tmp/esmm_bench_pipeline] [--seed 7] [--beam-option=--direct_num_workers=2] [-v]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components import console  # noqa: E402
from load_average import load_avg  # noqa: E402

STEPS = ("snapshot", "ingest", "transform", "train", "evaluate", "push")
TARGET_S = 360


def simulated(config_name: str, rows: int, seed: int, work_dir: Path) -> Path:
    """The raw Ali-CCP log for this config, size and seed, simulated unless already there."""
    from bench_ingest import simulated_log
    from components.devtools.simulator import SimulationSpec
    from pipelines.config import load_config

    spec = SimulationSpec.for_preset("baseline", rows=rows, seed=seed, ctr=0.04, cvr=0.005)
    return simulated_log(spec, load_config(config_name), work_dir / f"raw_{Path(config_name).stem}_{rows}_seed{seed}")


def step_table(seconds: dict[str, float], rows: int, wall: float) -> str:
    """The per-step wall time table, in pipeline order."""
    lines = ["| step | wall s | share | rows/s |", "|---|---:|---:|---:|"]
    for step in STEPS:
        s = seconds.get(f"{step}-step")
        if s is None:
            lines.append(f"| {step} | not run | | |")
            continue
        lines.append(f"| {step} | {s:.1f} | {s / wall:.0%} | {rows / s:,.0f} |")
    lines.append(f"| **run** | **{wall:.1f}** | | **{rows / wall:,.0f}** |")
    return "\n".join(lines)


def benchmark(args: argparse.Namespace) -> None:
    from pipelines.config import load_config
    from pipelines.local_run import run_local

    work_dir = Path(args.work_dir)
    raw = simulated(args.config, args.rows, args.seed, work_dir)
    print(f"load average after the simulation: {load_avg()}", flush=True)
    run_dir = work_dir / f"run_{Path(args.config).stem}_{args.rows}"
    shutil.rmtree(run_dir, ignore_errors=True)
    started = time.perf_counter()
    run = run_local(args.config, str(raw), str(run_dir / "serving"), str(run_dir), epochs=args.epochs,
                    beam_options=args.beam_option or None)
    wall = time.perf_counter() - started
    epochs = args.epochs or load_config(args.config).training.epochs
    print(f"\nesmm run on {args.rows:,} rows, config {args.config}, {epochs} epochs, load average {load_avg()}")
    print(step_table(run.step_seconds, args.rows, wall))
    print(f"target: <= {TARGET_S} s at 1M rows; run: {run.run_dir}; blessing {run.blessing['status']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--config", default="aliccp", help="shipped config name or YAML path (default: %(default)s)")
    parser.add_argument("--epochs", type=int, help="override training.epochs (default: the config's)")
    parser.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "esmm_bench_pipeline"))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--beam-option", action="append", default=[], metavar="OPTION",
                        help="extra Beam option for every Beam step, repeatable")
    parser.add_argument("-v", "--verbose", action="store_true", help="every library's log lines too")
    args = parser.parse_args()
    with console.quiet(args.verbose):
        print(f"load average at start: {load_avg()}", flush=True)
        benchmark(args)
        print(f"load average at end: {load_avg()}", flush=True)


if __name__ == "__main__":
    main()
