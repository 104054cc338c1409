"""The Pusher: atomic versioned pushes, retention, refusals, and the baseline it leaves for the next blessing."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import tensorflow as tf

from components.artifacts import storage
from components.evaluate.gate import bless
from components.push import executor as push_module
from components.push.executor import push
from esmm_model.config import EvaluationConfig, Threshold
from esmm_model.contracts.blessing import read_blessing
from esmm_model.contracts.model_store import latest_pushed, pushed_versions
from esmm_model.errors import InputError

GATE = EvaluationConfig(thresholds=(Threshold("cvr/clicked/auc", min=0.52, max_regression=0.01),))
MODEL_FILES = {
    "saved_model.pb": b"graph",
    "fingerprint.pb": b"fingerprint",
    "variables/variables.index": b"index",
    "variables/variables.data-00000-of-00001": b"weights" * 100,
    "assets/vocab.txt": b"a\nb\n",
}


def metrics(cvr_auc: float) -> dict:
    return {"cvr": {"clicked": {"auc": cvr_auc}}}


@pytest.fixture
def model_dir(tmp_path: Path) -> str:
    """A tiny stand-in SavedModel directory: the Pusher only copies files."""
    root = tmp_path / "export"
    for rel, data in MODEL_FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return str(root)


@pytest.fixture
def serving_base(tmp_path: Path) -> str:
    return str(tmp_path / "serving")


def blessed_for(serving_base: str, cvr_auc: float):
    """The blessing the pipeline would compute: the candidate against whatever is pushed now."""
    baseline = latest_pushed(serving_base, "esmm")
    return bless(metrics(cvr_auc), baseline.metrics if baseline else None, GATE,
                 baseline_version=baseline.version if baseline else None)


def push_once(model_dir: str, serving_base: str, cvr_auc: float, keep_versions: int = 5):
    return push(model_dir, blessed_for(serving_base, cvr_auc), serving_base, "esmm", keep_versions, metrics(cvr_auc))


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_push_writes_a_complete_version_with_its_record(model_dir, serving_base):
    result = push_once(model_dir, serving_base, 0.60)
    assert (result.pushed, result.version, result.removed_versions) == (True, 1, ())
    assert result.path == f"{serving_base}/esmm/1"
    written = files_under(Path(result.path))
    assert {rel: written[rel] for rel in MODEL_FILES} == MODEL_FILES
    assert json.loads(written["assets.extra/metrics.json"]) == metrics(0.60)
    assert read_blessing(f"{result.path}/assets.extra/blessing.json").blessed
    assert sorted(p.name for p in Path(serving_base, "esmm").iterdir()) == ["1"]  # no temporary left


def test_latest_pushed_returns_the_baseline_for_the_next_blessing(model_dir, serving_base):
    assert latest_pushed(serving_base, "esmm") is None
    push_once(model_dir, serving_base, 0.60)
    push_once(model_dir, serving_base, 0.65)
    latest = latest_pushed(serving_base, "esmm")
    assert (latest.version, latest.path, latest.metrics) == (2, f"{serving_base}/esmm/2", metrics(0.65))


def test_versions_strictly_increase_and_retention_keeps_the_last_n(model_dir, serving_base):
    results = [push_once(model_dir, serving_base, 0.60 + i / 100, keep_versions=3) for i in range(5)]
    assert [r.version for r in results] == [1, 2, 3, 4, 5]
    assert [r.removed_versions for r in results] == [(), (), (), (1,), (2,)]
    assert pushed_versions(serving_base, "esmm") == [3, 4, 5]


def test_next_version_follows_the_highest_even_after_gaps(model_dir, serving_base):
    push_once(model_dir, serving_base, 0.60)
    Path(serving_base, "esmm", "41").mkdir()  # e.g. pushed by hand, incomplete: no saved_model.pb
    Path(serving_base, "esmm", "not_a_version").mkdir()
    result = push_once(model_dir, serving_base, 0.61)  # the baseline is still 1, the latest complete version
    assert result.version == 42


def test_unblessed_model_is_never_pushed_and_the_result_says_why(model_dir, serving_base):
    push_once(model_dir, serving_base, 0.60)
    result = push_once(model_dir, serving_base, 0.50)
    assert not result.pushed and result.version is None
    assert result.reason == ("the model is NOT_BLESSED: cvr/clicked/auc = 0.5000 is below min 0.5200; "
                             "cvr/clicked/auc = 0.5000 vs 0.6000 in pushed version 1 (higher is better): "
                             "worse by 0.1000, more than max_regression 0.0100")
    assert pushed_versions(serving_base, "esmm") == [1]


def test_blessing_judged_against_an_outdated_baseline_is_refused(model_dir, serving_base):
    push_once(model_dir, serving_base, 0.60)
    stale = blessed_for(serving_base, 0.70)  # judged against version 1 ...
    push_once(model_dir, serving_base, 0.80)  # ... but version 2 lands first
    result = push(model_dir, stale, serving_base, "esmm", 5, metrics(0.70))
    assert not result.pushed
    assert "compared the model with pushed version 1" in result.reason and "it is version 2" in result.reason
    first_model_blessing = bless(metrics(0.70), None, GATE)
    refused = push(model_dir, first_model_blessing, serving_base, "esmm", 5)
    assert "compared the model with no baseline" in refused.reason
    assert pushed_versions(serving_base, "esmm") == [1, 2]


def test_copy_crash_leaves_no_visible_version_and_the_previous_one_intact(model_dir, serving_base, monkeypatch):
    push_once(model_dir, serving_base, 0.60)
    before = files_under(Path(serving_base, "esmm", "1"))
    real_copy, copied, visible_at_crash = tf.io.gfile.copy, [], []

    def copy_then_die(src, dst, overwrite=False):
        if len(copied) == 2:
            visible_at_crash.extend(pushed_versions(serving_base, "esmm"))  # what TF Serving would see
            raise OSError("disk died mid-copy")
        copied.append(dst)
        real_copy(src, dst, overwrite)

    monkeypatch.setattr(tf.io.gfile, "copy", copy_then_die)
    with pytest.raises(OSError, match="disk died"):
        push_once(model_dir, serving_base, 0.61)
    assert visible_at_crash == [1]
    assert len(copied) == 2 and all("/.tmp-2-" in dst for dst in copied)  # the partial copy went to the temp name
    assert sorted(p.name for p in Path(serving_base, "esmm").iterdir()) == ["1"]  # and was cleaned up
    assert files_under(Path(serving_base, "esmm", "1")) == before
    assert latest_pushed(serving_base, "esmm").version == 1


def test_temporary_left_by_a_killed_push_is_invisible_to_versions(model_dir, serving_base):
    push_once(model_dir, serving_base, 0.60)
    leftover = Path(serving_base, "esmm", ".tmp-2-deadbeef")
    (leftover / "variables").mkdir(parents=True)  # a SIGKILL mid-copy skips every cleanup
    assert pushed_versions(serving_base, "esmm") == [1]
    assert push_once(model_dir, serving_base, 0.61).version == 2
    assert leftover.is_dir()  # it may belong to a live pusher, so it is not deleted


def test_the_next_push_removes_temporaries_of_dead_pushes_only(model_dir, serving_base):
    push_once(model_dir, serving_base, 0.60)
    model_base = Path(serving_base, "esmm")
    dead, live = model_base / ".tmp-2-deadbeef", model_base / ".tmp-2-cafecafe"
    for tmp in (dead, live):
        (tmp / "variables").mkdir(parents=True)
        (tmp / "variables" / "variables.data-00000-of-00001").write_bytes(b"half")
    old = time.time() - push_module.STALE_TMP_AGE_S - 60
    for path in (dead / "variables" / "variables.data-00000-of-00001", dead / "variables", dead):
        os.utime(path, (old, old))
    result = push_once(model_dir, serving_base, 0.61)
    assert result.version == 2 and result.removed_temporaries == (".tmp-2-deadbeef",)
    assert not dead.exists() and live.is_dir()
    assert "removed the temporary directories of failed pushes: .tmp-2-deadbeef" in result.describe()


def test_object_store_promotion_copies_saved_model_pb_last(model_dir, serving_base, monkeypatch):
    monkeypatch.setattr(storage, "has_atomic_rename", lambda path: False)
    real_copy, into_version = tf.io.gfile.copy, []

    def recording_copy(src, dst, overwrite=False):
        if "/esmm/1/" in dst:
            into_version.append(dst.split("/esmm/1/", 1)[1])
        real_copy(src, dst, overwrite)

    monkeypatch.setattr(tf.io.gfile, "copy", recording_copy)
    result = push_once(model_dir, serving_base, 0.60)
    assert result.version == 1
    assert into_version[-1] == "saved_model.pb"
    assert sorted(into_version) == sorted([*MODEL_FILES, "assets.extra/metrics.json", "assets.extra/blessing.json"])
    assert sorted(p.name for p in Path(serving_base, "esmm").iterdir()) == ["1"]  # the temporary was deleted


def test_a_directory_without_saved_model_pb_is_rejected_by_name(tmp_path, serving_base):
    (tmp_path / "not_a_model" / "variables").mkdir(parents=True)
    with pytest.raises(InputError,
                       match=r"model directory '.*not_a_model' is not a SavedModel: it has no saved_model.pb"):
        push(str(tmp_path / "not_a_model"), bless(metrics(0.6), None, GATE), serving_base, "esmm", 5)
    assert pushed_versions(serving_base, "esmm") == []


def test_cli_push_pushes_what_the_evaluator_blessed(model_dir, serving_base, tmp_path, capsys):
    from esmm_model.contracts.blessing import write_blessing
    from pipelines.cli import main

    def evaluation(name: str, ctr_auc: float) -> str:
        """An `esmm evaluate` output: the metrics and the blessing judged against what is pushed now."""
        out = tmp_path / name
        out.mkdir()
        record = {"ctr": {"all": {"auc": ctr_auc}}, "ctcvr": {"all": {"auc": 0.66}}, "cvr": {"clicked": {"auc": 0.60}}}
        (out / "metrics.json").write_text(json.dumps(record))
        baseline = latest_pushed(serving_base, "esmm")
        write_blessing(bless(record, baseline.metrics if baseline else None, EvaluationConfig(),
                             baseline_version=baseline.version if baseline else None), str(out / "blessing.json"))
        return str(out)

    # the default config: the shipped simulator
    args = ["push", "--model-dir", model_dir, "--serving-base", serving_base]
    assert main([*args, "--evaluation", evaluation("good", 0.70)]) == 0
    assert latest_pushed(serving_base, "esmm").metrics["ctcvr"]["all"]["auc"] == 0.66
    assert main([*args, "--evaluation", evaluation("bad", 0.50)]) == 3  # not pushed
    assert "not pushed\n  the model is NOT_BLESSED: ctr/all/auc = 0.5000 is below min 0.5500" in capsys.readouterr().out
    assert pushed_versions(serving_base, "esmm") == [1]
    assert main(["push", "--model-dir", str(tmp_path / "missing"), "--serving-base", serving_base,
                 "--evaluation", str(tmp_path / "good")]) == 2
    assert "esmm push: error: model directory" in capsys.readouterr().err
    assert main([*args, "--evaluation", str(tmp_path / "nothing")]) == 2
    assert "blessing file" in capsys.readouterr().err
