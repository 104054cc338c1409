"""The ESMM family's losses, outputs, embedding sharing and exact AUC, on hand-sized tensors."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from esmm_model.config import config_from_dict
from esmm_model.losses import CVR_WEIGHTS, counterfactual_loss, cvr_weights, product_bce_from_logits, variant_loss
from esmm_model.metrics import exact_auc
from esmm_model.model import EsmmModel
from esmm_model.training import compile_for_training
from esmm_model.variants import VARIANTS, VariantSpec

SIZES = {"user_id": 50, "item": 12, "hour": 4}


def small_config(variant: str = "esmm", **model):
    return config_from_dict({
        "name": "tiny",
        "features": [
            {"name": "user_id", "kind": "id", "side": "user", "preprocessing": {"hash_buckets": 50}},
            {"name": "hist_items", "kind": "weighted_ids", "side": "user", "shared_embedding": "item",
             "preprocessing": {"vocab": {"oov_buckets": 2}}},
            {"name": "item_id", "kind": "id", "side": "item", "shared_embedding": "item",
             "preprocessing": {"vocab": {"oov_buckets": 2}}},
            {"name": "price", "kind": "dense", "side": "item", "preprocessing": "zscore"},
            {"name": "hour", "kind": "dense", "side": "context", "preprocessing": {"buckets": [6, 12, 18]}},
        ],
        "model": {"variant": variant, "embedding_dim": 4, "tower_units": [8, 4], **model},
    })


def model_batch() -> dict[str, tf.Tensor]:
    return {
        "user_id": tf.constant([3, 7, 49], tf.int64),
        "hist_items": tf.constant([[1, 2, 0], [5, 0, 0], [0, 0, 0]], tf.int64),
        "hist_items_weight": tf.constant([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 0.0]]),
        "item_id": tf.constant([4, 11, 0], tf.int64),
        "price": tf.constant([0.5, -1.0, 2.0]),
        "hour": tf.constant([0, 3, 1], tf.int64),
    }


def labels(click, conversion) -> dict[str, tf.Tensor]:
    click, conversion = np.array(click), np.array(conversion)
    return {"click": tf.constant(click, tf.int64), "conversion": tf.constant(conversion, tf.int64),
            "ctcvr": tf.constant(click & conversion, tf.int64)}


def bce(y, p):
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


SEED = tf.constant([1, 2], tf.int64)


def test_esmm_loss_is_the_weighted_bce_formula():
    ctr_logit, cvr_logit = np.array([0.0, 1.0, -2.0, 0.3]), np.array([0.5, -1.0, 2.0, 1.5])
    y = labels([1, 1, 0, 1], [1, 0, 0, 1])
    config = small_config(ctr_loss_weight=1.0, ctcvr_loss_weight=0.5)
    outputs = {"ctr_logit": tf.constant(ctr_logit, tf.float32), "cvr_logit": tf.constant(cvr_logit, tf.float32)}
    losses = variant_loss(config.model, y, outputs, SEED)
    p_ctr, p_ctcvr = sigmoid(ctr_logit), sigmoid(ctr_logit) * sigmoid(cvr_logit)
    ctr = bce(np.array([1, 1, 0, 1]), p_ctr).mean()
    ctcvr = bce(np.array([1, 0, 0, 1]), p_ctcvr).mean()
    np.testing.assert_allclose(losses["ctr_loss"], ctr, rtol=1e-6)
    np.testing.assert_allclose(losses["ctcvr_loss"], ctcvr, rtol=1e-6)
    np.testing.assert_allclose(losses["loss"], ctr + 0.5 * ctcvr, rtol=1e-6)


def test_base_loss_trains_cvr_on_clicked_impressions_only():
    ctr_logit, cvr_logit = np.array([0.0, 1.0, -2.0]), np.array([0.5, -1.0, 2.0])
    outputs = {"ctr_logit": tf.constant(ctr_logit, tf.float32), "cvr_logit": tf.constant(cvr_logit, tf.float32)}
    losses = variant_loss(small_config("base").model, labels([1, 1, 0], [1, 0, 0]), outputs, SEED)
    expected = bce(np.array([1, 0]), sigmoid(cvr_logit[:2])).mean()
    np.testing.assert_allclose(losses["cvr_loss"], expected, rtol=1e-6)


@pytest.mark.parametrize("variant, expected", [
    ("base", [1.0, 1.0, 0.0, 0.0]),
    ("oversampling", [3.0, 1.0, 0.0, 0.0]),
    ("unbias", [1 / 0.5, 1 / 0.1, 0.0, 0.0]),
])
def test_cvr_weights(variant, expected):
    config = small_config(variant, oversampling_k=3, unbias_min_ctr=0.1)
    ctr_logit = tf.constant([0.0, -10.0, 0.0, 0.0])
    weights = cvr_weights(config.model, labels([1, 1, 0, 0], [1, 0, 0, 0]), ctr_logit, SEED)
    np.testing.assert_allclose(weights, expected, rtol=1e-5)


def test_aman_samples_unclicked_negatives_at_the_configured_rate():
    config = small_config("aman", aman_negative_rate=0.25)
    n = 20_000
    weights = cvr_weights(config.model, labels([1] * 10 + [0] * (n - 10), [0] * n), tf.zeros([n]), SEED).numpy()
    assert (weights[:10] == 1.0).all()
    assert abs(weights[10:].mean() - 0.25) < 0.01


@pytest.mark.parametrize("a, b", [(50.0, 50.0), (-50.0, -50.0), (50.0, -50.0), (-50.0, 50.0), (100.0, -100.0)])
@pytest.mark.parametrize("y", [0.0, 1.0])
def test_ctcvr_loss_and_gradient_stay_finite_at_extreme_logits(a, b, y):
    ctr_logit, cvr_logit = tf.Variable([a]), tf.Variable([b])
    with tf.GradientTape() as tape:
        loss = product_bce_from_logits(tf.constant([y]), ctr_logit, cvr_logit)
    gradients = tape.gradient(loss, [ctr_logit, cvr_logit])
    assert np.isfinite(loss.numpy()).all()
    assert all(np.isfinite(g.numpy()).all() for g in gradients)
    # -log(p) with log p = log σ(a) + log σ(b), exact in float64
    neg_log_p = np.logaddexp(0, -a) + np.logaddexp(0, -b)
    expected = neg_log_p if y else -np.log(-np.expm1(-neg_log_p))
    np.testing.assert_allclose(loss.numpy()[0], expected, rtol=1e-4, atol=1e-6)


def test_model_outputs_ctcvr_as_the_product():
    tf.random.set_seed(0)
    model = EsmmModel(small_config(), SIZES)
    outputs = model(model_batch())
    np.testing.assert_allclose(outputs["ctcvr"], outputs["ctr"].numpy() * outputs["cvr"].numpy(), rtol=1e-6)
    np.testing.assert_allclose(outputs["ctr"], sigmoid(outputs["ctr_logit"].numpy()), rtol=1e-5)
    assert outputs["ctr"].shape == [3]


def test_division_cvr_is_the_clipped_ratio():
    tf.random.set_seed(0)
    model = EsmmModel(small_config("division"), SIZES)
    outputs = {k: v.numpy() for k, v in model(model_batch()).items()}
    ratio = sigmoid(outputs["ctcvr_logit"]) / sigmoid(outputs["ctr_logit"])
    np.testing.assert_allclose(outputs["cvr"], np.clip(ratio, 0, 1), rtol=1e-5)


def _tables_read_by(model: EsmmModel, output: str) -> set:
    with tf.GradientTape() as tape:
        value = tf.reduce_sum(model(model_batch())[output])
    tables = model.embedding_variables()
    return {t.ref() for t, g in zip(tables, tape.gradient(value, tables)) if g is not None}


def test_esmm_towers_read_the_same_embedding_variables():
    model = EsmmModel(small_config("esmm"), SIZES)
    ctr, cvr = _tables_read_by(model, "ctr_logit"), _tables_read_by(model, "cvr_logit")
    assert ctr == cvr and len(ctr) == 3  # user_id, the shared item table, hour
    assert len(model.embedding_variables()) == 3


def test_esmm_ns_towers_read_different_embedding_variables():
    model = EsmmModel(small_config("esmm_ns"), SIZES)
    ctr, cvr = _tables_read_by(model, "ctr_logit"), _tables_read_by(model, "cvr_logit")
    assert len(ctr) == len(cvr) == 3 and not ctr & cvr


def test_shared_group_members_index_one_table():
    tf.random.set_seed(0)
    model = EsmmModel(small_config(), SIZES)
    table = model.ctr_embeddings.tables["item"]
    assert table.shape == (12, 4)
    batch = model_batch()
    x = model.ctr_embeddings(batch).numpy()
    # layout: user_id(4) | hist_items(4) | item_id(4) | price(1) | hour(4)
    np.testing.assert_allclose(x[0, 4:8], table[1].numpy() + 2 * table[2].numpy(), rtol=1e-6)
    np.testing.assert_allclose(x[0, 8:12], table[4].numpy(), rtol=1e-6)
    np.testing.assert_allclose(x[2, 4:8], 0.0)
    assert x[0, 12] == pytest.approx(0.5)


def test_exact_auc_counts_ties_half():
    assert exact_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert exact_auc(np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.2, 0.9])) == pytest.approx(0.875)
    assert np.isnan(exact_auc(np.array([1, 1]), np.array([0.2, 0.3])))


def test_every_variant_names_known_cvr_weights_and_a_distinct_table_row():
    assert {spec.cvr_weights for spec in VARIANTS.values()} - {None} == set(CVR_WEIGHTS)
    assert len({spec.table_row for spec in VARIANTS.values()}) == len(VARIANTS)
    with pytest.raises(ValueError, match="a cvr loss needs cvr_weights"):
        VariantSpec("cvr", shared_tables=False, loss="cvr", cvr_weights=None, table_row="X")


def test_a_variant_is_one_registry_entry(monkeypatch):
    """unbias over ESMM's shared tables: registering the spec is all it takes to configure, build and train it."""
    monkeypatch.setitem(VARIANTS, "unbias_shared", VariantSpec("cvr", shared_tables=True, loss="cvr",
                                                               cvr_weights="clicked_inverse_ctr", table_row="UNBIAS-S"))
    config = small_config("unbias_shared", unbias_min_ctr=0.1)
    model = EsmmModel(config, SIZES)
    assert _tables_read_by(model, "ctr_logit") == _tables_read_by(model, "cvr_logit")
    ctr_logit, cvr_logit = np.array([0.0, -3.0, 1.0]), np.array([0.5, -1.0, 2.0])
    outputs = {"ctr_logit": tf.constant(ctr_logit, tf.float32), "cvr_logit": tf.constant(cvr_logit, tf.float32)}
    losses = variant_loss(config.model, labels([1, 1, 0], [1, 0, 0]), outputs, SEED)
    weights = 1.0 / np.maximum(sigmoid(ctr_logit[:2]), 0.1)
    expected = (bce(np.array([1, 0]), sigmoid(cvr_logit[:2])) * weights).sum() / weights.sum()
    np.testing.assert_allclose(losses["cvr_loss"], expected, rtol=1e-6)


def test_mean_combiner_divides_the_weighted_sum_by_the_weights_sum():
    config = small_config()
    data = config.to_dict()
    data["features"][1]["combiner"] = "mean"
    tf.random.set_seed(0)
    model = EsmmModel(config_from_dict(data), SIZES)
    table = model.ctr_embeddings.tables["item"].numpy()
    x = model.ctr_embeddings(model_batch()).numpy()
    np.testing.assert_allclose(x[0, 4:8], (table[1] + 2 * table[2]) / 3, rtol=1e-6)
    np.testing.assert_allclose(x[1, 4:8], table[5], rtol=1e-6)
    np.testing.assert_allclose(x[2, 4:8], 0.0)  # an empty list pools to zeros, not NaN


@pytest.mark.parametrize("combiner", ["sum", "mean"])
def test_sparse_lists_pool_as_their_padded_form(combiner):
    """The serving signature passes weighted id lists sparse (serving_inputs); they pool to what the padded
    dense form of training gives, the last row empty (a batch's trailing rows may hold no ids)."""
    data = small_config().to_dict()
    data["features"][1]["combiner"] = combiner
    config = config_from_dict(data)
    tf.random.set_seed(0)
    model = EsmmModel(config, SIZES)
    dense = model_batch()
    sparse = dict(dense, hist_items=tf.sparse.from_dense(dense["hist_items_weight"] != 0),
                  hist_items_weight=tf.sparse.from_dense(dense["hist_items_weight"]))
    sparse["hist_items"] = tf.SparseTensor(sparse["hist_items"].indices,
                                           tf.gather_nd(dense["hist_items"], sparse["hist_items"].indices),
                                           sparse["hist_items"].dense_shape)
    table = model.ctr_embeddings.tables["item"].numpy()
    pooled = model.ctr_embeddings(sparse).numpy()[:, 4:8]
    expected = [table[1] + 2 * table[2], 3 * table[5], np.zeros(4)]
    if combiner == "mean":
        expected = [expected[0] / 3, expected[1] / 3, expected[2]]
    np.testing.assert_allclose(pooled, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(pooled, model.ctr_embeddings(dense).numpy()[:, 4:8], rtol=1e-6, atol=1e-7)
    for name in ("ctr", "cvr", "ctcvr"):
        np.testing.assert_allclose(model(sparse)[name], model(dense)[name], rtol=1e-6)


def test_dropout_acts_in_training_only():
    tf.random.set_seed(0)
    tower = EsmmModel(small_config(dropout=0.5, tower_units=[64, 64]), SIZES).ctr_tower
    x = tf.random.normal([32, 17])
    plain = x
    for dense in tower.hidden:
        plain = dense(plain)
    plain = tf.squeeze(tower.logit(plain), -1).numpy()
    np.testing.assert_allclose(tower(x, training=False), plain, rtol=1e-5)
    dropped = tower(x, training=True).numpy()
    assert np.abs(dropped - plain).max() > 1e-3
    assert not np.allclose(tower(x, training=True), dropped)  # a fresh mask each call


# ESCM²: five impressions, three clicked; pCTR 0.5, ~0.018 (clipped to 0.2), 0.82, and two unclicked.
ESCM2_CTR_LOGIT = np.array([0.0, -4.0, 1.5, -1.0, 2.0])
ESCM2_CVR_LOGIT = np.array([0.7, -0.3, -2.0, 1.2, 0.1])
ESCM2_CLICK, ESCM2_CONVERSION = [1, 1, 1, 0, 0], [1, 0, 1, 0, 0]
IMPUTED = np.array([0.9, 0.2, 1.7, 0.4, 0.6])


def _escm2_outputs(imputed: bool = False) -> dict[str, tf.Tensor]:
    outputs = {"ctr_logit": tf.constant(ESCM2_CTR_LOGIT, tf.float32),
               "cvr_logit": tf.constant(ESCM2_CVR_LOGIT, tf.float32)}
    if imputed:
        outputs["imputed_error"] = tf.constant(IMPUTED, tf.float32)
    return outputs


def _escm2_closed_form(clip: float) -> tuple[np.ndarray, np.ndarray]:
    """(click / max(pCTR, clip), e = BCE(conversion, pCVR)) per impression, in float64."""
    click, conversion = np.array(ESCM2_CLICK, float), np.array(ESCM2_CONVERSION, float)
    return click / np.maximum(sigmoid(ESCM2_CTR_LOGIT), clip), bce(conversion, sigmoid(ESCM2_CVR_LOGIT))


def test_escm2_ips_term_is_the_inverse_propensity_weighted_cvr_error_over_all_impressions():
    config = small_config("escm2_ips", ctcvr_loss_weight=0.5,
                          escm2={"counterfactual_weight": 0.3, "propensity_clip": 0.2})
    losses = variant_loss(config.model, labels(ESCM2_CLICK, ESCM2_CONVERSION), _escm2_outputs(), SEED)
    inverse, error = _escm2_closed_form(0.2)
    ips = (inverse * error).sum() / 5
    assert inverse[1] == pytest.approx(5.0)  # pCTR 0.018 clipped to 0.2
    np.testing.assert_allclose(losses["counterfactual_loss"], ips, rtol=1e-6)
    ctr = bce(np.array(ESCM2_CLICK), sigmoid(ESCM2_CTR_LOGIT)).mean()
    ctcvr = bce(np.array([1, 0, 1, 0, 0]), sigmoid(ESCM2_CTR_LOGIT) * sigmoid(ESCM2_CVR_LOGIT)).mean()
    np.testing.assert_allclose(losses["ctr_loss"], ctr, rtol=1e-6)
    np.testing.assert_allclose(losses["ctcvr_loss"], ctcvr, rtol=1e-6)
    np.testing.assert_allclose(losses["loss"], ctr + 0.5 * ctcvr + 0.3 * ips, rtol=1e-6)
    assert set(losses) == set(VARIANTS["escm2_ips"].loss_parts)


def test_escm2_dr_terms_are_the_doubly_robust_risk_and_the_imputation_loss():
    config = small_config("escm2_dr", escm2={"counterfactual_weight": 0.3, "propensity_clip": 0.2})
    losses = variant_loss(config.model, labels(ESCM2_CLICK, ESCM2_CONVERSION), _escm2_outputs(imputed=True), SEED)
    inverse, error = _escm2_closed_form(0.2)
    dr = (IMPUTED + inverse * (error - IMPUTED)).sum() / 5
    imputation = (inverse * (error - IMPUTED) ** 2).sum() / 5
    np.testing.assert_allclose(losses["counterfactual_loss"], dr, rtol=1e-6)
    np.testing.assert_allclose(losses["imputation_loss"], imputation, rtol=1e-6)
    np.testing.assert_allclose(losses["loss"], losses["ctr_loss"].numpy() + losses["ctcvr_loss"].numpy()
                               + 0.3 * (dr + imputation), rtol=1e-6)


@pytest.mark.parametrize("variant", ["escm2_ips", "escm2_dr"])
def test_escm2_propensity_passes_no_gradient_and_the_cvr_gradient_is_inverse_propensity_weighted(variant):
    config = small_config(variant, escm2={"propensity_clip": 0.2})
    outputs = {name: tf.Variable(value) for name, value in _escm2_outputs(imputed=variant == "escm2_dr").items()}
    with tf.GradientTape(persistent=True) as tape:
        risk = counterfactual_loss(config.model, labels(ESCM2_CLICK, ESCM2_CONVERSION), outputs)
    assert tape.gradient(risk["counterfactual_loss"], outputs["ctr_logit"]) is None
    inverse, _ = _escm2_closed_form(0.2)
    # d/da BCE(y, σ(a)) = σ(a) − y, and ê does not depend on the CVR logit
    expected = inverse * (sigmoid(ESCM2_CVR_LOGIT) - np.array(ESCM2_CONVERSION)) / 5
    np.testing.assert_allclose(tape.gradient(risk["counterfactual_loss"], outputs["cvr_logit"]), expected,
                               rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("variant", ["escm2_ips", "escm2_dr"])
def test_escm2_variants_build_over_shared_tables_and_train_a_step(variant):
    tf.random.set_seed(0)
    config = small_config(variant)
    model = EsmmModel(config, SIZES)
    assert _tables_read_by(model, "ctr_logit") == _tables_read_by(model, "cvr_logit")
    outputs = model(model_batch())
    assert ("imputed_error" in outputs) == (variant == "escm2_dr")
    compile_for_training(model, config.training)
    towers = [model.second_tower] + ([model.imputation_tower] if variant == "escm2_dr" else [])
    before = [tower.logit.kernel.numpy() for tower in towers]
    losses = model.train_step((model_batch(), labels([1, 1, 0], [1, 0, 0])))
    assert set(losses) == set(VARIANTS[variant].loss_parts)
    assert all(np.isfinite(float(v)) for v in losses.values())
    assert all(np.abs(tower.logit.kernel.numpy() - old).max() > 0 for tower, old in zip(towers, before))


def test_embedding_l2_penalises_every_row_and_shrinks_rows_no_batch_touched():
    """model.embedding_l2 (DeepCTR's l2_reg_embedding): λ·Σ w² over whole tables, so a row absent from the batch
    still gets the gradient 2λw; with SGD on the tables at rate r it becomes (1 − 2rλ)·w exactly."""
    l2, rate = 0.01, 0.5
    data = small_config(embedding_l2=l2).to_dict()
    data["training"] = {"embedding_optimizer": "sgd", "embedding_learning_rate": rate}
    config = config_from_dict(data)
    tf.random.set_seed(0)
    model = EsmmModel(config, SIZES)
    tables = {name: table.numpy() for name, table in model.ctr_embeddings.tables.items()}
    np.testing.assert_allclose(float(model.embedding_penalty()),
                               l2 * sum(float(np.square(t.astype(np.float64)).sum()) for t in tables.values()),
                               rtol=1e-5)
    model(model_batch())
    compile_for_training(model, config.training)
    model.train_step((model_batch(), labels([1, 1, 0], [1, 0, 0])))
    untouched = 10  # user_id rows of the batch: 3, 7, 49
    np.testing.assert_allclose(model.ctr_embeddings.tables["user_id"].numpy()[untouched],
                               (1 - 2 * rate * l2) * tables["user_id"][untouched], rtol=1e-6)
    assert float(EsmmModel(small_config(), SIZES).embedding_penalty()) == 0.0


@pytest.mark.parametrize("variant", ["esmm", "division", "escm2_dr", "base"])
def test_scoring_with_contexts_equals_scoring_the_merged_rows(variant):
    """The ranking signature's path: shared features on one row per distinct context, embedded and multiplied into
    the first layers once, give the scores of every candidate's merged row."""
    tf.random.set_seed(0)
    model = EsmmModel(small_config(variant), SIZES)
    batch = model_batch()
    model(batch)
    rows = tf.constant([0, 0, 1, 2, 1, 0], tf.int64)
    own = {"item_id": tf.constant([4, 11, 0, 7, 4, 2], tf.int64), "price": tf.constant([0.5, -1.0, 2.0, 0.0, 1.0, 3.0])}
    shared = {k: v for k, v in batch.items() if k not in own}
    merged = {**{k: tf.gather(v, rows) for k, v in shared.items()}, **own}
    expected, scored = model(merged), model.score_with_contexts({**shared, **own}, rows)
    assert sorted(scored) == sorted(expected)
    for name in expected:
        np.testing.assert_allclose(scored[name], expected[name], rtol=1e-5, atol=1e-7, err_msg=name)
    assert np.ptp(scored["ctr"].numpy()) > 0
