"""`make demo`: simulate impressions, run the whole pipeline locally, push, and show the result."""
from __future__ import annotations

import time
from pathlib import Path

from components.devtools.simulator import GROUND_TRUTH_FILE, SimulationSpec, simulate
from pipelines.config import load_config
from pipelines.local_run import run_local


def run_demo(out_dir: str, *, config_path: str, rows: int) -> None:
    """Simulates ``rows`` impressions into ``out_dir/sim`` and runs ingest -> ... -> push under kfp.local."""
    out = Path(out_dir)
    started = time.perf_counter()
    config = load_config(config_path)
    print(f"[1/2] simulating {rows:,} impressions (ground truth kept aside for evaluation)", flush=True)
    print(simulate(SimulationSpec(rows=rows), config, out / "sim").describe(), flush=True)
    print("[2/2] running the pipeline under kfp.local: ingest -> transform -> train -> evaluate -> push", flush=True)
    run = run_local(config_path, str(out / "sim"), str(out / "serving"), str(out / "run"),
                    ground_truth=str(out / "sim" / GROUND_TRUTH_FILE))
    print("\n" + run.describe())
    print(f"serving base: {out / 'serving'} (try: esmm serve --serving-base {out / 'serving'})")
    print(f"demo took {time.perf_counter() - started:.0f} s")
