"""A retried kfp step finds its own output artifact holding a failed attempt's files, and runs anyway."""
from pathlib import Path
from types import SimpleNamespace

from esmm_model.config import config_to_json, load_config
from pipelines.steps import ingest_step

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT / "tests" / "fixtures" / "aliccp"


class _Counts(SimpleNamespace):
    def log_metric(self, name, value):
        self.metrics[name] = value


def test_a_retried_ingest_step_replaces_the_failed_attempts_output(tmp_path):
    examples = SimpleNamespace(path=str(tmp_path / "examples"), uri=str(tmp_path / "examples"), metadata={})
    stale = Path(examples.path) / "train" / "data-00000-of-00004.tfrecord.gz"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"left by the failed attempt")
    counts = _Counts(metrics={})
    ingest_step(config_to_json(load_config("aliccp")), str(REAL), "fingerprint", examples, counts,
                beam_options=["--direct_running_mode=in_memory", "--direct_num_workers=1"])
    assert not stale.exists()
    assert counts.metrics["rows_read"] == 40 and counts.metrics["rows_rejected"] == 0
    assert counts.metrics["train_rows"] + counts.metrics["eval_rows"] == 40
    assert examples.metadata["input_fingerprint"] == "fingerprint"
