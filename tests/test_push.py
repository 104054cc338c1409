"""The Pusher: atomic versioned pushes, retention, refusals, and the baseline it leaves for the next blessing."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import tensorflow as tf

from components.artifacts import storage
from components.evaluate.gate import bless
from components.push import executor as push_module
from components.push.executor import push
from esmm_model.config import EvaluationConfig, Threshold, load_config
from esmm_model.contracts.blessing import read_blessing
from esmm_model.contracts.fingerprint import model_fingerprint
from esmm_model.contracts.model_config import read_model_config
from esmm_model.contracts.model_store import latest_pushed, pushed_versions, served_baseline
from esmm_model.errors import InputError
from stub_models import MODELS_CONFIG, save_stub_model

GATE = EvaluationConfig(thresholds=(Threshold("cvr/clicked/auc", min=0.52, max_regression=0.01),))


def metrics(cvr_auc: float) -> dict:
    return {"cvr": {"clicked": {"auc": cvr_auc}}}


@pytest.fixture(scope="module")
def stub_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_stub_model(load_config("simulator"), tmp_path_factory.mktemp("stub"), 1)


@pytest.fixture
def model_dir(tmp_path: Path, stub_export: Path) -> str:
    """A tiny SavedModel with the trainer's serving contract, in the test's own directory."""
    root = tmp_path / "export"
    shutil.copytree(stub_export, root)
    return str(root)


@pytest.fixture
def serving_base(tmp_path: Path) -> str:
    return str(tmp_path / "serving")


def blessed_for(serving_base: str, cvr_auc: float, model_dir: str, model_config_file: str | None = None):
    """The blessing the pipeline would compute: the candidate against the served baseline now."""
    entry = read_model_config(model_config_file, "esmm") if model_config_file else None
    baseline = served_baseline(serving_base, "esmm", entry)
    return bless(metrics(cvr_auc), baseline.metrics if baseline else None, GATE,
                 baseline_version=baseline.version if baseline else None,
                 model_fingerprint=model_fingerprint(model_dir))


def push_once(model_dir: str, serving_base: str, cvr_auc: float, keep_versions: int = 5,
              model_config_file: str | None = None):
    return push(model_dir, blessed_for(serving_base, cvr_auc, model_dir, model_config_file), serving_base, "esmm",
                keep_versions, metrics(cvr_auc), model_config_file=model_config_file)


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_push_writes_a_complete_version_with_its_record(model_dir, serving_base):
    result = push_once(model_dir, serving_base, 0.60)
    assert (result.pushed, result.version, result.removed_versions) == (True, 1, ())
    assert result.path == f"{serving_base}/esmm/1"
    written, model_files = files_under(Path(result.path)), files_under(Path(model_dir))
    assert {rel: written[rel] for rel in model_files} == model_files
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
    stale = blessed_for(serving_base, 0.70, model_dir)  # judged against version 1 ...
    push_once(model_dir, serving_base, 0.80)  # ... but version 2 lands first
    result = push(model_dir, stale, serving_base, "esmm", 5, metrics(0.70))
    assert not result.pushed
    assert "compared the model with pushed version 1" in result.reason and "it is version 2" in result.reason
    first_model_blessing = bless(metrics(0.70), None, GATE, model_fingerprint=model_fingerprint(model_dir))
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
    assert sorted(into_version) == sorted([*files_under(Path(model_dir)), "assets.extra/metrics.json",
                                           "assets.extra/blessing.json"])
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
                             baseline_version=baseline.version if baseline else None,
                             model_fingerprint=model_fingerprint(model_dir)), str(out / "blessing.json"))
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


def test_retention_never_deletes_what_the_model_config_labels_and_stable_is_the_baseline(model_dir, serving_base,
                                                                                          tmp_path):
    config_file = tmp_path / "models.config"
    config_file.write_text(MODELS_CONFIG % f"{serving_base}/esmm")
    results = [push_once(model_dir, serving_base, 0.60 + i / 100, model_config_file=str(config_file))
               for i in range(8)]  # v1 stable and v2 canary, then six more pushes with keep_versions 5
    assert [r.version for r in results] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert [r.removed_versions for r in results] == [(), (), (), (), (), (), (), (3,)]
    assert pushed_versions(serving_base, "esmm") == [1, 2, 4, 5, 6, 7, 8]
    assert results[-1].kept_for_serving == ("1 (labelled stable, pinned by the specific version policy)",
                                            "2 (labelled canary, pinned by the specific version policy)")
    assert "kept older versions the model config needs: 1 (labelled stable" in results[-1].describe()
    # every candidate after the first was judged against the version users are served: stable, not the latest
    assert {read_blessing(f"{r.path}/assets.extra/blessing.json").baseline_version
            for r in results[1:] if r.version != 3} == {1}
    judged_against_latest = bless(metrics(0.9), metrics(0.67), GATE, baseline_version=8,
                                  model_fingerprint=model_fingerprint(model_dir))
    refused = push(model_dir, judged_against_latest, serving_base, "esmm", 5, model_config_file=str(config_file))
    assert not refused.pushed and "the served baseline changed since (it is version 1)" in refused.reason


def test_without_a_model_config_retention_keeps_the_last_n_only(model_dir, serving_base):
    results = [push_once(model_dir, serving_base, 0.60 + i / 100, keep_versions=2) for i in range(3)]
    assert (results[-1].removed_versions, results[-1].kept_for_serving) == ((1,), ())


def test_a_stable_label_on_a_version_not_in_the_store_is_refused(model_dir, serving_base, tmp_path):
    config_file = tmp_path / "models.config"
    config_file.write_text((MODELS_CONFIG % f"{serving_base}/esmm").replace('value: 1 }', 'value: 9 }'))
    assert served_baseline(serving_base, "esmm", read_model_config(str(config_file), "esmm")) is None  # first push
    push_once(model_dir, serving_base, 0.60)
    with pytest.raises(InputError, match=r"labels version 9 of 'esmm' stable, but .*/esmm holds versions \[1\]"):
        push_once(model_dir, serving_base, 0.61, model_config_file=str(config_file))


def without_variables(model_dir: str, tmp_path: Path) -> str:
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    shutil.rmtree(broken / "variables")
    return str(broken)


def test_a_blessing_is_bound_to_the_model_it_judged(model_dir, serving_base, tmp_path):
    blessing = blessed_for(serving_base, 0.60, model_dir)
    broken = without_variables(model_dir, tmp_path)
    assert model_fingerprint(broken) != model_fingerprint(model_dir) == blessing.model_fingerprint
    with pytest.raises(InputError, match=r"^the blessing is for another model: it judged sha256:[0-9a-f]{64}, but "
                                         r"'.*broken' is sha256:[0-9a-f]{64}; push the model that was evaluated"):
        push(broken, blessing, serving_base, "esmm", 5)
    unbound = bless(metrics(0.6), None, GATE)
    with pytest.raises(InputError, match=r"the blessing names no model \(no model_fingerprint\)"):
        push(model_dir, unbound, serving_base, "esmm", 5)
    assert pushed_versions(serving_base, "esmm") == []


def test_a_model_that_does_not_load_is_never_published(model_dir, serving_base, tmp_path):
    broken = without_variables(model_dir, tmp_path)
    blessing = blessed_for(serving_base, 0.60, broken)  # even a blessing computed for it
    with pytest.raises(InputError, match=r"^model directory '.*broken' does not load as TF Serving would: ") as caught:
        push(broken, blessing, serving_base, "esmm", 5)
    assert "\n" not in str(caught.value)
    assert pushed_versions(serving_base, "esmm") == [] and latest_pushed(serving_base, "esmm") is None


def test_cli_push_refuses_a_model_without_variables_in_one_line(model_dir, serving_base, tmp_path, capsys):
    from esmm_model.contracts.blessing import write_blessing
    from pipelines.cli import main

    evaluation = tmp_path / "evaluation"  # `esmm evaluate`'s output for another run's model
    evaluation.mkdir()
    (evaluation / "metrics.json").write_text(json.dumps(metrics(0.6)))
    write_blessing(blessed_for(serving_base, 0.60, model_dir), str(evaluation / "blessing.json"))
    broken = without_variables(model_dir, tmp_path)
    assert main(["push", "--model-dir", broken, "--serving-base", serving_base, "--evaluation", str(evaluation)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("esmm push: error: the blessing is for another model")
    assert captured.err.count("\n") == 1
    assert pushed_versions(serving_base, "esmm") == []
