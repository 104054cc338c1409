"""The trainer end to end on tiny transformed data: every variant, export, resume, NaN stop."""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft

from components.train import callbacks as train_callbacks
from components.train.callbacks import latest_backup
from components.train.executor import NonFiniteLossError, batches_from_memory, make_dataset, parsed_windows, train
from components.transform.executor import transform
from esmm_model.config import config_from_dict, load_config
from esmm_model.contracts import layout
from esmm_model.contracts.predict_request import split_example
from esmm_model.errors import InputError
from esmm_model.metrics import exact_auc
from esmm_model.model import EsmmModel, model_inputs
from esmm_model.preprocessing import table_sizes
from esmm_model.schema import feature_spec
from esmm_model.variants import VARIANTS
from raw_examples import make_example, random_rows, write_ingest_dir

REPO = Path(__file__).resolve().parents[1]
TRAIN_ROWS, BATCH = 160, 32
STEPS_PER_EPOCH = TRAIN_ROWS // BATCH


def tiny_config(variant: str = "esmm", **training):
    data = load_config("simulator").to_dict()
    data["model"].update(variant=variant, tower_units=[16, 8], embedding_dim=4)
    data["training"].update({"batch_size": BATCH, "epochs": 1, **training})
    return config_from_dict(data)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[str, list[dict]]:
    root = tmp_path_factory.mktemp("train")
    config = tiny_config()
    eval_rows = random_rows(config, 64, seed=2)
    ingest = write_ingest_dir(config, root / "ingest", random_rows(config, TRAIN_ROWS, seed=1), eval_rows)
    outputs = transform(config, ingest, root / "transform", ["--runner=DirectRunner"])
    return outputs.root, eval_rows


@pytest.fixture(scope="module")
def esmm_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("esmm")
    return out, train(tiny_config(), data[0], out, version=7)


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_trains_one_epoch(variant, data, tmp_path):
    result = train(tiny_config(variant), data[0], tmp_path, version=1)
    assert result.step == STEPS_PER_EPOCH
    final = result.metrics["final"]
    assert final["examples"] == 64 and np.isfinite(final["train_loss"])
    # The reported AUCs are the exported model's on the eval rows, recomputed here from its served scores.
    eval_rows = data[1]
    served = tf.saved_model.load(result.export_dir).signatures["serving_default"](
        examples=tf.constant([make_example(tiny_config(variant), r, labels=False) for r in eval_rows]))
    click = np.array([r["click"] for r in eval_rows], bool)
    ctcvr = click & np.array([r["conversion"] for r in eval_rows], bool)
    assert final["clicks"] == click.sum() and final["conversions"] == ctcvr.sum()
    assert final["ctr_auc"] == pytest.approx(exact_auc(click, served["ctr"].numpy()), abs=1e-6)
    assert final["ctcvr_auc"] == pytest.approx(exact_auc(ctcvr, served["ctcvr"].numpy()), abs=1e-6)
    assert final["cvr_auc_clicked"] == pytest.approx(exact_auc(ctcvr[click], served["cvr"].numpy()[click]), abs=1e-6)
    assert result.export_dir == layout.TrainLayout(str(tmp_path)).export_dir(1)
    assert tf.saved_model.contains_saved_model(result.export_dir)


@pytest.mark.slow
def test_export_layout_and_side_files(esmm_run):
    out, result = esmm_run
    paths = layout.TrainLayout(str(out))
    assert result.export_dir == paths.export_dir(7)
    record = json.loads(Path(layout.record_file(result.export_dir, layout.RECORD_METRICS)).read_text())
    assert record["final"]["step"] == STEPS_PER_EPOCH
    assert "features" in Path(layout.record_file(result.export_dir, layout.RECORD_CONFIG)).read_text()
    assert list(Path(paths.tensorboard("eval")).iterdir())
    history = json.loads(Path(paths.metrics).read_text())["history"]
    assert [h["epoch"] for h in history] == [1]


@pytest.mark.slow
def test_training_is_deterministic_for_a_seed(data, esmm_run, tmp_path):
    again = train(tiny_config(), data[0], tmp_path, version=1)
    def learned(history: list[dict]) -> list[dict]:  # all but the timing
        return [{k: v for k, v in h.items() if k not in train_callbacks.TIMINGS} for h in history]

    assert learned(again.metrics["history"]) == learned(esmm_run[1].metrics["history"])


@pytest.mark.slow
def test_exported_signature_matches_the_in_process_model(data, esmm_run):
    transform_root, eval_rows = data
    out, result = esmm_run
    config = tiny_config()
    tft_output = tft.TFTransformOutput(layout.TransformLayout(transform_root).graph)
    model = EsmmModel(config, table_sizes(config, tft_output))
    tf.train.Checkpoint(model=model).restore(latest_backup(layout.TrainLayout(str(out)).default_checkpoints)).expect_partial()
    raw = tf.io.parse_example([make_example(config, r) for r in eval_rows], feature_spec(config))
    expected = model(model_inputs(config, tft_output.transform_raw_features(raw))[0])

    serve = tf.saved_model.load(result.export_dir).signatures["serving_default"]
    served = serve(examples=tf.constant([make_example(config, r, labels=False) for r in eval_rows]))
    for name in ("ctr", "cvr", "ctcvr"):
        assert served[name].dtype == tf.float32 and served[name].shape == [len(eval_rows)]
        np.testing.assert_allclose(served[name], expected[name], rtol=1e-5, atol=1e-7)

    # A feature left out of a request takes its default instead of failing the batch.
    row = {k: v for k, v in eval_rows[0].items() if k not in ("price", "user_id", "hist_items")}
    with_defaults = {**row, "price": 0.0, "user_id": "", "hist_items": []}
    missing, explicit = (serve(examples=tf.constant([make_example(config, r, labels=False)]))["ctr"]
                         for r in (row, with_defaults))
    np.testing.assert_allclose(missing, explicit)


@pytest.mark.slow
def test_resume_continues_the_step_count(data, esmm_run, tmp_path):
    out, first = esmm_run
    resumed = train(tiny_config(epochs=2), data[0], out, version=8)
    assert resumed.step == 2 * STEPS_PER_EPOCH
    history = resumed.metrics["history"]
    assert [h["step"] for h in history] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    assert history[0] == first.metrics["history"][0]  # the first epoch is kept, not rerun


@pytest.mark.slow
def test_steps_per_epoch_caps_each_epoch(data, tmp_path):
    assert STEPS_PER_EPOCH > 2
    result = train(tiny_config(epochs=2, steps_per_epoch=2), data[0], tmp_path, version=1)
    assert result.step == 4
    assert [(h["epoch"], h["step"]) for h in result.metrics["history"]] == [(1, 2), (2, 4)]


@pytest.mark.slow
def test_a_retried_step_resumes_from_checkpoints_kept_outside_its_output(data, tmp_path):
    """A retried pod gets a fresh output artifact; the run-keyed checkpoint directory carries it on."""
    checkpoints = str(tmp_path / "work" / "run-1" / "checkpoints")
    first = train(tiny_config(), data[0], str(tmp_path / "attempt1"), checkpoint_dir=checkpoints, version=1)
    assert not (tmp_path / "attempt1" / "checkpoints").exists()
    retried = train(tiny_config(epochs=2), data[0], str(tmp_path / "attempt2"), checkpoint_dir=checkpoints, version=1)
    assert retried.step == 2 * STEPS_PER_EPOCH
    assert [h["epoch"] for h in retried.metrics["history"]] == [1, 2]
    assert retried.metrics["history"][0] == first.metrics["history"][0]


@pytest.mark.slow
def test_non_finite_loss_stops_with_a_clear_error(data, tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"loss became (nan|inf) at step \d+ .*learning_rate"):
        train(tiny_config(learning_rate=1e35), data[0], tmp_path, version=1)


@pytest.mark.slow
def test_an_empty_split_is_named_not_a_stop_iteration(tmp_path):
    config = tiny_config()
    ingest = write_ingest_dir(config, tmp_path / "ingest", random_rows(config, 40, seed=3), [])
    outputs = transform(config, ingest, tmp_path / "transform", ["--runner=DirectRunner"])
    with pytest.raises(InputError, match=r"no examples in '.*/eval/\*\.tfrecord\.gz': the split is empty"):
        train(config, outputs.root, tmp_path / "train", version=1)


@pytest.mark.slow
def test_the_export_uses_only_ops_the_pinned_tf_serving_registers(esmm_run):
    """A fast stand-in for `make serving-compat`: TF Serving would refuse an op its TensorFlow lacks."""
    spec = importlib.util.spec_from_file_location("serving_compat", REPO / "scripts" / "serving_compat.py")
    serving_compat = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serving_compat)
    serving_tf = re.search(r"^SERVING_TF_VERSION \?= (\S+)$", (REPO / "Makefile").read_text(), re.M).group(1)
    listing = (REPO / "tests" / "fixtures" / "serving_ops" / f"tensorflow-{serving_tf}.txt").read_text()
    registered = {line for line in listing.splitlines() if line and not line.startswith("#")}
    used = serving_compat.ops_used(esmm_run[1].export_dir)
    assert {"ParseExampleV2", "ResourceGather"} <= used  # the serving signature parses and looks up embeddings
    assert not used - registered, f"TensorFlow {serving_tf} lacks {sorted(used - registered)}; see make serving-compat"


@pytest.mark.slow
def test_a_run_interrupted_mid_epoch_resumes_at_the_next_batch(data, esmm_run, tmp_path, monkeypatch):
    """Backups every 2 steps; the run dies at the end of epoch 1 (after the backup of step 4, before
    the epoch's own): the rerun trains step 5 only, on the batch the uninterrupted run saw."""
    def preempted(self, epoch, logs=None):
        raise RuntimeError("preempted")

    with monkeypatch.context() as patch:
        patch.setattr(train_callbacks.EpochEvaluation, "on_epoch_end", preempted)
        with pytest.raises(RuntimeError, match="preempted"):
            train(tiny_config(), data[0], tmp_path, version=1, checkpoint_every=2)
    checkpoints = layout.TrainLayout(str(tmp_path)).default_checkpoints
    assert train_callbacks.backed_up_position(checkpoints, STEPS_PER_EPOCH) == (0, 4)
    resumed = train(tiny_config(), data[0], tmp_path, version=1, checkpoint_every=2)
    assert resumed.step == STEPS_PER_EPOCH
    def learned(entry: dict) -> dict:  # the train loss covers only the steps this run did
        return {k: v for k, v in entry.items() if k not in (*train_callbacks.TIMINGS, "train_loss")}

    assert learned(resumed.metrics["final"]) == learned(esmm_run[1].metrics["final"])


@pytest.mark.slow
def test_early_stopping_ends_training_and_a_rerun_does_not_train_again(data, tmp_path):
    """A learning rate too small to move float32 weights: the eval AUC never improves after epoch 1."""
    config = tiny_config(epochs=5, early_stopping_patience=1, learning_rate=1e-12, embedding_optimizer="same")
    stopped = train(config, data[0], tmp_path, version=1)
    assert [h["epoch"] for h in stopped.metrics["history"]] == [1, 2]
    assert stopped.metrics["history"][0]["ctcvr_auc"] == stopped.metrics["history"][1]["ctcvr_auc"]
    again = train(config, data[0], tmp_path, version=2)
    assert again.step == stopped.step == 2 * STEPS_PER_EPOCH
    assert again.metrics["history"] == stopped.metrics["history"]


@pytest.mark.slow
def test_progress_is_plain_lines_when_stdout_is_not_a_terminal(data, tmp_path, capsys):
    train(tiny_config(), data[0], tmp_path, version=1, log_every=2)
    out = capsys.readouterr().out
    assert "\r" not in out and "\x1b[" not in out
    assert re.search(r"^train: epoch 1 step 4: loss \d\.\d+ ctr_loss \d\.\d+ ctcvr_loss \d\.\d+, [\d,]+ examples/s$",
                     out, re.M)
    assert re.search(r"^train: epoch 1 \(step 5\): loss \d\.\d{5}, [\d,]+ examples/s, \d+\.\d s; "
                     r"eval \(whole, 64 rows, \d+\.\d s\): CTR AUC [01]\.\d{4}, CTCVR AUC [01]\.\d{4}, "
                     r"CVR AUC clicked [01]\.\d{4}$", out, re.M)


def test_a_backup_cadence_below_one_step_is_refused_before_training(tmp_path):
    with pytest.raises(InputError, match=r"checkpoint_every: a backup every 0 steps; give a positive number"):
        train(tiny_config(), str(tmp_path / "no-transform"), tmp_path / "out", checkpoint_every=0)


@pytest.mark.slow
def test_epochs_from_memory_are_the_batches_parsed_from_the_records(data):
    """The in-memory epochs (``hold_in_memory``) give make_dataset's batches, in its order, epoch by epoch."""
    config = tiny_config()
    transformed = layout.TransformLayout(data[0])
    tft_output = tft.TFTransformOutput(transformed.graph)
    pattern = transformed.split_pattern(layout.TRAIN)
    windows = parsed_windows(tft_output, pattern, BATCH)
    for seed in (42, 43):
        from_memory = list(batches_from_memory(config, windows, BATCH, seed))
        parsed = list(make_dataset(config, tft_output, pattern, batch_size=BATCH, shuffle_seed=seed))
        assert len(from_memory) == len(parsed) == STEPS_PER_EPOCH
        for (inputs, labels), (want_inputs, want_labels) in zip(from_memory, parsed):
            for name, value in {**want_inputs, **want_labels}.items():
                np.testing.assert_array_equal({**inputs, **labels}[name].numpy(), value.numpy(), err_msg=name)
    first = [next(iter(batches_from_memory(config, windows, BATCH, seed)))[0]["price"].numpy() for seed in (42, 43)]
    assert not np.array_equal(*first)  # each epoch its own order


@pytest.mark.slow
def test_the_rank_signature_scores_as_serving_default_on_the_merged_examples(data, esmm_run):
    """``rank`` reads each row's shared features from ``context`` and its own from ``examples``; rows that
    repeat a context (one ranking request's candidates) share its embedding, and the scores do not change."""
    config = tiny_config()
    loaded = tf.saved_model.load(esmm_run[1].export_dir)
    merged = [make_example(config, r, labels=False) for r in data[1]]
    contexts, own = zip(*(split_example(config, e) for e in merged))
    assert all(len(c) < len(e) and len(o) < len(e) for c, o, e in zip(contexts, own, merged))
    expected = loaded.signatures["serving_default"](examples=tf.constant(merged))
    ranked = loaded.signatures["rank"](context=tf.constant(contexts), examples=tf.constant(own))
    for name in ("ctr", "cvr", "ctcvr"):
        np.testing.assert_allclose(ranked[name], expected[name], rtol=1e-6, atol=1e-8)
    # Two requests batched together, each user's context repeated over the other rows' candidates.
    users = [contexts[0]] * 5 + [contexts[1]] * 4
    requests = [split_example(config, e)[1] for e in merged[:9]]
    rejoined = [u + o for u, o in zip(users, requests)]  # concatenated serialized Examples parse as one merged
    together = loaded.signatures["rank"](context=tf.constant(users), examples=tf.constant(requests))
    np.testing.assert_allclose(together["ctr"], loaded.signatures["serving_default"](
        examples=tf.constant(rejoined))["ctr"], rtol=1e-6, atol=1e-8)
    empty = loaded.signatures["rank"](context=tf.constant([], tf.string), examples=tf.constant([], tf.string))
    assert empty["ctr"].shape == [0]
