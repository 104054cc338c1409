"""Ingest and transform through Beam's portable Job API (the API Flink and Spark serve), against the DirectRunner.

A fixture starts Beam's Python job service (no Java) on a free port; the steps run with
``--runner=PortableRunner --environment_type=LOOPBACK`` (the SDK worker in this process) on
tiny data, and their outputs must equal the DirectRunner's: the same rows, counts.json and
vocabularies.
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import tensorflow as tf

from components.devtools.simulator import SimulationSpec, simulate
from components.ingest.executor import ingest
from components.transform.executor import transform
from esmm_model.config import config_from_dict, load_config
from esmm_model.contracts import layout
from raw_examples import random_rows, write_ingest_dir

DIRECT = ["--runner=DirectRunner"]
ROWS = 300
# Few features, one of each preprocessing, so that tf.Transform's two runs stay short.
SMALL = config_from_dict({
    "name": "small",
    "features": [
        {"name": "user_id", "kind": "id", "side": "user", "preprocessing": {"hash_buckets": 50}},
        {"name": "item_id", "kind": "id", "side": "item", "preprocessing": {"vocab": {"oov_buckets": 1}}},
        {"name": "hist_items", "kind": "weighted_ids", "side": "user", "preprocessing": {"vocab": {}}},
        {"name": "price", "kind": "dense", "side": "item", "preprocessing": "zscore"},
        {"name": "hour", "kind": "dense", "side": "context", "preprocessing": {"buckets": [6, 12, 18]}},
    ],
})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def job_endpoint(tmp_path_factory):
    """Beam's Python job service on a free port, up until the module's tests are done."""
    port = _free_port()
    log = tmp_path_factory.mktemp("job_service") / "job_service.log"
    with open(log, "wb") as out:
        service = subprocess.Popen([sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
                                    "--port", str(port)], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            if service.poll() is not None:
                pytest.fail(f"the job service exited with {service.returncode}: {log.read_text()[-2000:]}")
            with socket.socket() as s:
                if s.connect_ex(("localhost", port)) == 0:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"the job service did not listen on port {port} within 60 s")
            time.sleep(0.2)
        yield f"localhost:{port}"
    finally:
        service.terminate()
        try:
            service.wait(timeout=10)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait()


def _portable(endpoint: str) -> list[str]:
    return ["--runner=PortableRunner", f"--job_endpoint={endpoint}", "--environment_type=LOOPBACK"]


def _row(record: bytes) -> tuple:
    """A tf.Example as sorted (feature, values) pairs: equal rows compare equal whatever their byte order."""
    features = tf.train.Example.FromString(record).features.feature
    values = {name: getattr(f, f.WhichOneof("kind")).value if f.WhichOneof("kind") else ()
              for name, f in features.items()}
    return tuple(sorted((name, tuple(v)) for name, v in values.items() if len(v)))


def _records(pattern: str) -> Counter:
    """The rows of every shard matching ``pattern``, as a multiset."""
    files = tf.io.gfile.glob(pattern)
    return Counter(_row(r) for r in tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator())


def _vocabularies(graph: str) -> dict[str, bytes]:
    assets = Path(graph) / "transform_fn" / "assets"
    return {p.name: p.read_bytes() for p in sorted(assets.iterdir())}


def test_portable_ingest_writes_what_the_direct_runner_writes(job_endpoint, tmp_path):
    config = load_config("simulator")
    raw = tmp_path / "raw"
    simulate(SimulationSpec(rows=ROWS, users=40, items=90, categories=8, brands=12, shops=15, seed=3), config, raw)
    outputs = {}
    for name, args in (("direct", DIRECT), ("portable", _portable(job_endpoint))):
        out = layout.IngestLayout(str(tmp_path / name))
        counts = ingest(config, str(raw), out.root, args)
        outputs[name] = (counts.data, {split: _records(out.split_pattern(split)) for split in layout.SPLITS},
                         json.loads(Path(out.counts).read_text()))
    assert outputs["portable"] == outputs["direct"]
    counts, rows, _ = outputs["portable"]
    assert counts["rows_read"] == ROWS and sum(sum(r.values()) for r in rows.values()) == ROWS


def test_portable_transform_writes_what_the_direct_runner_writes(job_endpoint, tmp_path):
    ingest_dir = write_ingest_dir(SMALL, tmp_path / "ingest", random_rows(SMALL, 120, seed=1),
                                  random_rows(SMALL, 40, seed=2))
    outputs = {}
    for name, args in (("direct", DIRECT), ("portable", _portable(job_endpoint))):
        out = transform(SMALL, str(ingest_dir), str(tmp_path / name), args)
        outputs[name] = ({split: _records(out.split_pattern(split)) for split in layout.SPLITS},
                         _vocabularies(out.graph))
    assert outputs["portable"] == outputs["direct"]
    rows, vocabularies = outputs["portable"]
    assert (sum(rows["train"].values()), sum(rows["eval"].values())) == (120, 40)
    assert len(vocabularies) == 2 and all(vocabularies.values())  # item_id's and hist_items' vocabularies
