"""The ESMM paper's Table 2 and Figure 3 on the simulator, with ground truth the paper lacked.

Simulates (default preset), ingests and transforms once into --work-dir, then runs
``esmm experiment``: BASE, AMAN, OVERSAMPLING, UNBIAS, DIVISION, ESMM-NS and ESMM with
identical towers and hyperparameters (esmm_model/configs/simulator.yaml) for --repeats seeds, and the
sparsity sweep. Writes table2.md/.csv/.png, runs.csv and sparsity.md/.png to --out and
prints the table, the wall clock and the load average.

    .venv/bin/python benchmarks/reproduce_table2.py [--rows 2200000] [--epochs 2] [--repeats 5] \\
        [--work-dir DIR] [--out DIR]

The default size is where the comparison means something: at 200k impressions (100k training
rows, 100 steps in 4 epochs) every model is undertrained and BASE leads; at 2.2M (1.1M training
rows, 537 steps in 2 epochs) ESMM leads BASE beyond the seeds' spread (docs/results.md).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components import console  # noqa: E402

console.quiet_process()  # before TensorFlow or Beam load; ESMM_VERBOSE=1 shows their lines

import tensorflow as tf  # noqa: E402

from components.devtools.simulator import GROUND_TRUTH_FILE, SimulationSpec, simulate  # noqa: E402
from components.ingest.executor import ingest  # noqa: E402
from components.transform.executor import transform  # noqa: E402
from esmm_model.config import load_config  # noqa: E402
from esmm_model.contracts import layout  # noqa: E402
from load_average import load_avg_short  # noqa: E402
from pipelines.cli import main as esmm  # noqa: E402

CONFIG = "simulator"
BEAM = ["--runner=DirectRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=2"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_200_000, help="simulated impressions (half go to train)")
    parser.add_argument("--epochs", type=int, default=2, help="training epochs of every variant")
    parser.add_argument("--repeats", type=int, default=5, help="seeds per variant (the paper: 10)")
    parser.add_argument("--fractions", default="0.1,0.25,0.5,1", help="sparsity sweep sampling rates")
    parser.add_argument("--work-dir", default=str(Path(tempfile.gettempdir()) / "esmm_table2_data"))
    parser.add_argument("--out", default="table2_out")
    args = parser.parse_args()
    work_dir = Path(args.work_dir)
    config = load_config(CONFIG)
    started = time.perf_counter()
    ingested = layout.IngestLayout(str(work_dir / "ingest"))
    transformed = layout.TransformLayout(str(work_dir / "transform"))
    if not tf.io.gfile.exists(ingested.counts):
        simulate(SimulationSpec.for_preset("baseline", rows=args.rows), config, work_dir / "raw")
        ingest(config, str(work_dir / "raw"), ingested.root, BEAM)
    if not tf.io.gfile.isdir(layout.join(transformed.graph, "transform_fn")):
        transform(config, ingested.root, transformed.root, BEAM)
    code = esmm(["experiment", "--config", CONFIG, "--transform-dir", transformed.root,
                 "--ingest-dir", ingested.root, "--ground-truth", str(work_dir / "raw" / GROUND_TRUTH_FILE),
                 "--out", args.out, "--repeats", str(args.repeats), "--fractions", args.fractions,
                 "--epochs", str(args.epochs)])
    load = load_avg_short()
    print(f"{time.perf_counter() - started:.0f} s wall clock, load average {load}")
    sys.exit(code)


if __name__ == "__main__":
    main()
