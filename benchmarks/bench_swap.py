"""How much a version swap stalls `esmm serve`: latency and failures of a steady request stream
while the server loads a new version beside the one it serves.

The server runs in its own process (`esmm serve`) on a copy of --model as version 1; client
threads send Predict requests of --batch empty tf.Examples (every feature at its default)
with the client's default deadline and no retries. After --warm seconds the same export is
pushed as version 2 (copied to a hidden sibling, then renamed, as the pusher does). The
table compares the requests that started before the push with those that started while
version 2 was loading, and counts failures.

    .venv/bin/python benchmarks/bench_swap.py --model <export dir with saved_model.pb>
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from load_average import load_avg  # noqa: E402
from serving_client.client import PredictionClient, RetryPolicy  # noqa: E402
from serving_client.errors import ServingError  # noqa: E402


def wait_for_port(client: PredictionClient, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            client.predict([b""], timeout_s=5.0)
            return
        except ServingError:
            time.sleep(0.5)
    raise SystemExit("the server did not answer in time")


def summarize(label: str, rows: list[tuple[float, float, str]]) -> str:
    if not rows:
        return f"{label:<28} {'-':>6}"
    latencies = np.array([latency for _, latency, _ in rows]) * 1000
    failed = sum(1 for *_, outcome in rows if outcome != "ok")
    return (f"{label:<28} {len(rows):>6} {failed:>7} {np.percentile(latencies, 50):>8.1f} "
            f"{np.percentile(latencies, 99):>8.1f} {latencies.max():>8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="an exported SavedModel directory")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=0.5, help="per-request deadline (the client's default)")
    parser.add_argument("--warm", type=float, default=8.0, help="seconds of traffic before the push")
    parser.add_argument("--after", type=float, default=5.0, help="seconds of traffic after version 2 answers")
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="bench_swap_"))
    model_dir = base / "esmm"
    shutil.copytree(args.model, model_dir / "1")
    port = 8500 + os.getpid() % 1000
    server = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "serve", "--serving-base", str(base),
                              "--model-name", "esmm", "--port", str(port), "--poll-interval", "0.5"],
                             cwd=Path(__file__).resolve().parents[1], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
    rows: list[tuple[float, float, str, int]] = []
    stop = threading.Event()
    batch = [b""] * args.batch
    try:
        probe = PredictionClient(f"127.0.0.1:{port}", "esmm", timeout_s=args.timeout, retry=RetryPolicy(max_attempts=1))
        wait_for_port(probe, 120)

        def stream() -> None:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    version = probe.predict(batch).model_version
                    outcome = "ok"
                except ServingError as exc:
                    version, outcome = 0, exc.code.name
                rows.append((started, time.monotonic() - started, outcome, version))

        threads = [threading.Thread(target=stream) for _ in range(args.clients)]
        for thread in threads:
            thread.start()
        time.sleep(args.warm)
        load_before = load_avg()
        push_at = time.monotonic()
        shutil.copytree(args.model, model_dir / ".tmp-2")
        os.rename(model_dir / ".tmp-2", model_dir / "2")
        while not any(version == 2 for *_, version in rows[-50:]) and time.monotonic() - push_at < 120:
            time.sleep(0.05)
        swapped_at = time.monotonic()
        time.sleep(args.after)
        stop.set()
        for thread in threads:
            thread.join()
        load_after = load_avg()
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(base, ignore_errors=True)

    before = [(s, lat, out) for s, lat, out, _ in rows if s < push_at]
    during = [(s, lat, out) for s, lat, out, _ in rows if push_at <= s < swapped_at]
    after = [(s, lat, out) for s, lat, out, _ in rows if s >= swapped_at]
    print(f"\nversion 2 answered {swapped_at - push_at:.1f} s after the push; {args.clients} clients, "
          f"{args.batch} examples a request, deadline {args.timeout} s, no retries; load {load_before} -> {load_after}")
    print(f"{'requests started':<28} {'count':>6} {'failed':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    print(summarize("before the push", before))
    print(summarize("while version 2 loads", during))
    print(summarize("after the swap", after))
    failures: dict[str, int] = {}
    for *_, outcome, _ in rows:
        if outcome != "ok":
            failures[outcome] = failures.get(outcome, 0) + 1
    print(f"failures by code: {failures or 'none'}")
    stalls = [s - push_at for s, lat, *_ in rows if lat > args.timeout * 0.8]
    if stalls:
        print(f"slow or failed requests started {min(stalls):.1f} to {max(stalls):.1f} s after the push")


if __name__ == "__main__":
    main()
