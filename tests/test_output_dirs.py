"""Every step refuses an output directory holding anything but its own resumable state, with one line."""
from pathlib import Path

import pytest

from components.artifacts.output_dir import OutputExistsError, require_empty
from components.evaluate.executor import evaluate
from components.ingest.executor import ingest
from components.train.executor import train
from components.transform.executor import transform
from esmm_model.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIG = load_config("simulator")


@pytest.fixture
def used(tmp_path) -> Path:
    out = tmp_path / "out"
    (out / "train").mkdir(parents=True)
    (out / "train" / "data-00000-of-00004.tfrecord.gz").write_bytes(b"old")
    (out / "counts.json").write_text("{}")
    return out


def test_missing_or_empty_directories_are_accepted(tmp_path):
    require_empty(str(tmp_path / "missing"), "ingest")
    require_empty(str(tmp_path), "ingest")


@pytest.mark.parametrize("step", ["ingest", "transform", "train", "evaluate"])
def test_each_step_refuses_a_directory_holding_an_earlier_run(step, used, tmp_path):
    expected = (f"{step} output directory {str(used)!r} is not empty (it holds counts.json, train); steps never "
                f"write over an earlier run: delete it or choose another directory")
    with pytest.raises(OutputExistsError) as err:
        if step == "ingest":
            ingest(CONFIG, str(ROOT / "tests" / "fixtures" / "aliccp"), str(used), ["--runner=DirectRunner"])
        elif step == "transform":
            transform(CONFIG, tmp_path, used, ["--runner=DirectRunner"])
        elif step == "train":
            train(CONFIG, str(tmp_path), str(used))
        else:
            model = tmp_path / "model"
            model.mkdir()
            (model / "saved_model.pb").write_bytes(b"")
            (tmp_path / "ingest" / "eval").mkdir(parents=True)
            (tmp_path / "ingest" / "eval" / "data-0.tfrecord.gz").write_bytes(b"")
            evaluate(CONFIG, str(model), str(tmp_path / "ingest"), str(used), ["--runner=DirectRunner"])
    assert str(err.value) == expected
    assert (used / "train" / "data-00000-of-00004.tfrecord.gz").read_bytes() == b"old"  # left as it was


def test_train_resumes_its_own_directory_but_refuses_foreign_files(tmp_path):
    out = tmp_path / "train"
    for name in ("checkpoints", "tensorboard", "model"):
        (out / name).mkdir(parents=True)
    (out / "metrics.json").write_text("{}")
    require_empty(str(out), "train", resumable=frozenset({"checkpoints", "tensorboard", "metrics.json", "model"}))
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match=r"it holds notes.txt\)"):
        train(CONFIG, str(tmp_path), str(out))
