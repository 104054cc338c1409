"""Learning curve: ESMM's four AUCs against the number of training impressions, beside the oracle.

One simulated log (default preset, --rows impressions, time split in halves) is ingested and
transformed once; ESMM (esmm_model/configs/simulator.yaml, or --config) is trained on a random subset
of N training impressions for each --sizes N, with the experiment machinery, and scored on
the whole eval half. The same eval rows for every size make the points comparable; the
vocabularies come from the whole train half (ids only, no labels).

    .venv/bin/python benchmarks/bench_learning_curve.py --work-dir DIR [--rows 2200000] [--sizes 50000,200000,1000000]
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components import console  # noqa: E402

console.quiet_process()  # before TensorFlow or Beam load; ESMM_VERBOSE=1 shows their lines

import tensorflow as tf  # noqa: E402

from components.devtools.experiment import METRICS, fit_and_predict, load_data, oracle_scores, score  # noqa: E402
from components.devtools.simulator import GROUND_TRUTH_FILE, SimulationSpec, simulate  # noqa: E402
from components.ingest.executor import ingest  # noqa: E402
from components.transform.executor import transform  # noqa: E402
from esmm_model.config import load_config, with_overrides  # noqa: E402
from esmm_model.contracts import layout  # noqa: E402
from load_average import load_avg_short  # noqa: E402
from overrides import apply_overrides  # noqa: E402

BEAM = ["--runner=DirectRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=2"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_200_000, help="simulated impressions (half go to train)")
    parser.add_argument("--sizes", default="50000,200000,1000000", help="training impressions per point")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--config", default="simulator")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override the config, e.g. model.embedding_init_stddev=0.0001 (repeatable)")
    parser.add_argument("--work-dir", default=str(Path(tempfile.gettempdir()) / "esmm_learning_curve"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work_dir = Path(args.work_dir)
    config = load_config(args.config)
    config = apply_overrides(config, args.set)
    if not (work_dir / "ingest" / "counts.json").is_file():
        simulate(SimulationSpec.for_preset("baseline", rows=args.rows), config, work_dir / "raw")
        ingest(config, str(work_dir / "raw"), str(work_dir / "ingest"), BEAM)
    if not tf.io.gfile.isdir(layout.join(layout.TransformLayout(str(work_dir / "transform")).graph, "transform_fn")):
        transform(config, str(work_dir / "ingest"), str(work_dir / "transform"), BEAM)
    started = time.perf_counter()
    data = load_data(config, str(work_dir / "transform"), str(work_dir / "ingest"),
                     str(work_dir / "raw" / GROUND_TRUTH_FILE))
    oracle = oracle_scores(data.eval)
    lines = []
    for size in (int(s) for s in args.sizes.split(",")):
        if size > len(data.train):
            print(f"skipping {size:,}: the train half has {len(data.train):,} rows", flush=True)
            continue
        for i in range(args.seeds):
            seed = config.training.seed + i
            run = fit_and_predict(data, with_overrides(config, {"training": {"seed": seed}}), seed=seed,
                                  fraction=size / len(data.train))
            figures = score(data.eval, **run.predictions)
            clicks = int(round(size / len(data.train) * data.train.labels["click"].sum()))
            lines.append(f"| {size:,} | ~{clicks:,} | {seed} | " + " | ".join(f"{figures[m]:.4f}" for m in METRICS)
                         + f" | {run.seconds:.0f} |")
            print(lines[-1], flush=True)
    load = load_avg_short()
    print(f"\n{len(data.eval):,} eval rows; {time.perf_counter() - started:.0f} s, load average {load}\n")
    print("| train impressions | clicks | seed | " + " | ".join(METRICS.values()) + " | train s |")
    print("|---|---|---|" + "---|" * len(METRICS) + "---|")
    print("| oracle | | | " + " | ".join(f"{oracle[m]:.4f}" for m in METRICS) + " | |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
