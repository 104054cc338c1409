"""Serving benchmark: client-side packing cost, and end-to-end latency against `esmm serve`.

Requests hold 100 candidates with the seed's 34 features (esmm_model/configs/seed_layout.yaml: 24 user,
2 context, 8 item), read from pipe-delimited key-value rows. The model server runs in its
own process, as in production. Without ``--serving-base`` it serves a stand-in SavedModel
with the trainer's signature (tests/stub_models.py) that parses every feature.

    .venv/bin/python benchmarks/bench_serving.py [--requests 300] [--serving-base DIR --model-name esmm]
"""
from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "benchmarks")]

from components import console  # noqa: E402

console.quiet_process()  # before TensorFlow loads; ESMM_VERBOSE=1 shows its lines

from esmm_model.config import Config, Feature, load_config  # noqa: E402
from load_average import load_avg_short  # noqa: E402
from serving_client.client import PredictionClient  # noqa: E402
from serving_client.packing import ExamplePacker, ItemCache  # noqa: E402
from stub_models import reference_pack, reference_pack_shared, save_stub_model  # noqa: E402

CANDIDATES = 100
ITEM_POOL = 5_000
LIST_LENGTH = 10


def _value(feature: Feature, rng: random.Random) -> object:
    def one_id() -> object:
        return rng.randrange(1, 10**6) if feature.dtype == "int64" else f"{feature.name[:3]}{rng.randrange(10**6)}"
    if feature.kind == "dense":
        return round(rng.random() * 100, 3)
    if feature.kind == "id":
        return one_id()
    ids = [one_id() for _ in range(LIST_LENGTH)]
    return ids, [float(rng.randint(1, 9)) for _ in ids]


def _text(feature: Feature, value: object) -> str:
    if feature.kind == "weighted_ids":
        ids, weights = value
        return ",".join(f"{i}:{w:g}" for i, w in zip(ids, weights))
    return str(value)


class Workload:
    """One user and an item pool, both as feature dicts and as the seed's pipe-delimited rows."""

    def __init__(self, config: Config, packer: ExamplePacker, seed: int = 0) -> None:
        rng = random.Random(seed)
        self.user = {f.name: _value(f, rng) for f in config.features_on("user")}
        self.context = {f.name: _value(f, rng) for f in config.features_on("context")}
        self.items = [{f.name: _value(f, rng) for f in config.features_on("item")} for _ in range(ITEM_POOL)]
        self.user_row = self._row(config, packer, "user", self.user)
        self.context_row = self._row(config, packer, "context", self.context)
        self.item_rows = [self._row(config, packer, "item", item) for item in self.items]
        self._rng = rng

    @staticmethod
    def _row(config: Config, packer: ExamplePacker, side: str, values: dict) -> str:
        return "|".join(_text(config.feature(name), values[name]) for name in packer.columns(side))

    def request(self) -> list[int]:
        """The item indices of one request."""
        return self._rng.sample(range(ITEM_POOL), CANDIDATES)


def time_per_call(fn: Callable[[], object], repeat: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def bench_packing(config: Config, repeat: int) -> list[tuple[str, float]]:
    cache = ItemCache(max_items=ITEM_POOL)
    packer = ExamplePacker(config, item_cache=cache)
    work = Workload(config, packer)
    picks = work.request()
    shared = {**work.user, **work.context}
    dicts = [work.items[i] for i in picks]
    rows = [work.item_rows[i] for i in picks]
    keys = [(i, 1) for i in picks]
    packer.pack_rows(work.user_row, work.context_row, work.item_rows, item_keys=[(i, 1) for i in range(ITEM_POOL)])
    return [
        ("message classes, full Example per candidate",
         time_per_call(lambda: reference_pack(config, shared, dicts), repeat)),
        ("message classes, shared part serialized once",
         time_per_call(lambda: reference_pack_shared(config, shared, dicts), repeat)),
        ("wire encoder, shared part once, from dicts", time_per_call(lambda: packer.pack(shared, dicts), repeat)),
        ("wire encoder, shared part once, from pipe rows", time_per_call(
            lambda: packer.pack_rows(work.user_row, work.context_row, rows), repeat)),
        ("pipe rows + warm item cache (fastest)", time_per_call(
            lambda: packer.pack_rows(work.user_row, work.context_row, rows, item_keys=keys), repeat)),
    ]


def start_server(config_path: Path, serving_base: Path, model_name: str) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "serve", "--config", str(config_path), "--serving-base",
         str(serving_base),
         "--model-name", model_name, "--port", "0", "--workers", "8"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = process.stdout.readline()
    if "serving" not in line:
        process.kill()
        raise RuntimeError(f"esmm serve did not start: {line!r}")
    return process, line.split(" on ")[1].split()[0]


def bench_latency(config: Config, target: str, model_name: str, clients: int,
                  requests: int, rank: bool) -> tuple[float, float, float]:
    """p50 and p99 end-to-end latency (pack + Predict) in ms, and requests/s, over all clients; ``rank``: the
    shared features packed once and sent as the ``rank`` signature's context, else merged into every example
    for ``serving_default``."""
    latencies: list[float] = []
    lock = threading.Lock()
    cache = ItemCache(max_items=ITEM_POOL)
    packer = ExamplePacker(config, item_cache=cache)
    work = Workload(config, packer)
    batches = [work.request() for _ in range(requests)]

    def run(client: PredictionClient, mine: list[list[int]]) -> None:
        local = []
        for picks in mine:
            start = time.perf_counter()
            rows, keys = [work.item_rows[i] for i in picks], [(i, 1) for i in picks]
            if rank:
                context, parts = packer.pack_rows_parts(work.user_row, work.context_row, rows, item_keys=keys)
                client.predict(parts, context=context)
            else:
                client.predict(packer.pack_rows(work.user_row, work.context_row, rows, item_keys=keys))
            local.append(time.perf_counter() - start)
        with lock:
            latencies.extend(local)

    pool = [PredictionClient(target, model_name, timeout_s=5.0) for _ in range(clients)]
    for client in pool:  # warm up channels and the server
        for _ in range(5):
            run(client, [work.request()])
    latencies.clear()
    threads = [threading.Thread(target=run, args=(pool[c], batches[c::clients])) for c in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    for client in pool:
        client.close()
    ms = np.array(latencies) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), len(ms) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="seed_layout")
    parser.add_argument("--serving-base", help="serve a real export from <serving-base>/<model-name>/<version>")
    parser.add_argument("--model-name", default="esmm")
    parser.add_argument("--requests", type=int, default=300, help="timed requests per latency run")
    parser.add_argument("--pack-repeat", type=int, default=200, help="timed repetitions per packing path")
    args = parser.parse_args()
    config = load_config(args.config)

    print(f"packing one request of {CANDIDATES} candidates x {len(config.features)} features "
          f"({', '.join(f'{len(config.features_on(s))} {s}' for s in ('user', 'context', 'item'))})")
    print(f"{'path':<50} {'ms/request':>10}")
    for name, seconds in bench_packing(config, args.pack_repeat):
        print(f"{name:<50} {seconds * 1000:>10.3f}")

    with tempfile.TemporaryDirectory() as tmp:
        serving_base = Path(args.serving_base) if args.serving_base else Path(tmp)
        if not args.serving_base:
            (serving_base / args.model_name).mkdir()
            save_stub_model(config, serving_base / args.model_name, 1)
        model = "real export" if args.serving_base else "stand-in model (tests/stub_models.py)"
        process, target = start_server(Path(args.config), serving_base, args.model_name)
        try:
            print(f"\nend to end (pack with warm item cache + Predict), esmm serve in its own process, {model}")
            print(f"{'signature':>15} {'clients':>7} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8}  load")
            for clients in (1, 8):
                for signature in ("serving_default", "rank"):
                    p50, p99, rate = bench_latency(config, target, args.model_name, clients, args.requests,
                                                   rank=signature == "rank")
                    print(f"{signature:>15} {clients:>7} {args.requests:>8} {p50:>8.2f} {p99:>8.2f} {rate:>8.1f}  "
                          f"{load_avg_short()}", flush=True)
        finally:
            process.terminate()
            process.wait(timeout=30)


if __name__ == "__main__":
    main()
