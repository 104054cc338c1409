"""Losses of the ESMM family, computed from logits so they stay finite for any logit.

ESMM: ``ctr_loss_weight · BCE(click, pCTR) + ctcvr_loss_weight · BCE(click AND conversion,
pCTR · pCVR)`` over all impressions; the CVR tower gets no direct loss. The CTCVR term
uses ``log p = log σ(a) + log σ(b)`` and the exact identity
``log(1 - σ(a)σ(b)) = logsumexp(-a, -b, -a-b) - softplus(-a) - softplus(-b)``,
so it neither overflows nor takes log(0) when probabilities are tiny or near one.

The competitors train a CTR network on BCE(click) over all impressions, weighted by
``ctr_loss_weight``, and their second network as their ``VariantSpec`` says, weighted by
``ctcvr_loss_weight``:
- a ``ctcvr`` head (division): BCE(click AND conversion, pCTCVR) over all impressions;
- a ``cvr`` loss: BCE(conversion, pCVR), weighted per impression by ``CVR_WEIGHTS[cvr_weights]``:
  - ``clicked`` (base): clicked impressions only;
  - ``clicked_and_sampled_negatives`` (aman): plus unclicked impressions sampled at
    ``aman_negative_rate`` as negatives;
  - ``clicked_conversions_k_times`` (oversampling): converted impressions weighted
    ``oversampling_k`` times (the same gradient as repeating them k times);
  - ``clicked_inverse_ctr`` (unbias): each clicked impression weighted by 1 / max(pCTR,
    ``unbias_min_ctr``), pCTR from the CTR network without gradient.
  The weighted mean is self-normalised.

ESCM² (Wang et al., SIGIR 2022) adds to ESMM's loss ``model.escm2.counterfactual_weight`` (λ_c) times
a counterfactual CVR risk over all N impressions of the batch, with e = BCE(conversion, pCVR) and the
propensity p = max(pCTR, ``model.escm2.propensity_clip``) held constant (no gradient reaches the CTR
tower through it):
- ``ips`` (escm2_ips): (1/N) Σ click · e / p;
- ``dr`` (escm2_dr): (1/N) Σ [ê + click / p · (e − ê)], ê the imputation tower's predicted error on
  every impression, plus the imputation loss (1/N) Σ click / p · (e − ê)², which fits ê to e on
  clicks. As in the authors' release (PaddleRec's escm2), both terms pass gradients to e and to ê.
"""
from __future__ import annotations

from typing import Callable

import tensorflow as tf

from esmm_model.config import LABEL_CLICK, LABEL_CONVERSION, LABEL_CTCVR, ModelConfig
from esmm_model.variants import VARIANTS

LOSS_LABELS = {"ctcvr": LABEL_CTCVR, "cvr": LABEL_CONVERSION}


def bce_from_logits(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Per-example binary cross-entropy of sigmoid(logits)."""
    return tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.cast(labels, logits.dtype), logits=logits)


def product_bce_from_logits(labels: tf.Tensor, ctr_logits: tf.Tensor, cvr_logits: tf.Tensor) -> tf.Tensor:
    """Per-example BCE of p = sigmoid(ctr_logits) · sigmoid(cvr_logits), stable for any logits."""
    labels = tf.cast(labels, ctr_logits.dtype)
    a, b = ctr_logits, cvr_logits
    neg_log_p = tf.nn.softplus(-a) + tf.nn.softplus(-b)
    log_one_minus_p = tf.reduce_logsumexp(tf.stack([-a, -b, -a - b], axis=0), axis=0) - neg_log_p
    return labels * neg_log_p - (1.0 - labels) * log_one_minus_p


def _weighted_mean(values: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    return tf.math.divide_no_nan(tf.reduce_sum(values * weights), tf.reduce_sum(weights))


def _clicked(model_config: ModelConfig, labels: dict[str, tf.Tensor], ctr_logit: tf.Tensor,
             seed: tf.Tensor) -> tf.Tensor:
    return tf.cast(labels[LABEL_CLICK], tf.float32)


def _clicked_and_sampled_negatives(model_config: ModelConfig, labels: dict[str, tf.Tensor], ctr_logit: tf.Tensor,
                                   seed: tf.Tensor) -> tf.Tensor:
    click = _clicked(model_config, labels, ctr_logit, seed)
    sampled = tf.random.stateless_uniform(tf.shape(click), seed=seed) < model_config.aman_negative_rate
    return tf.maximum(click, tf.cast(sampled, tf.float32))


def _clicked_conversions_k_times(model_config: ModelConfig, labels: dict[str, tf.Tensor], ctr_logit: tf.Tensor,
                                 seed: tf.Tensor) -> tf.Tensor:
    conversion = tf.cast(labels[LABEL_CONVERSION], tf.float32)
    return _clicked(model_config, labels, ctr_logit, seed) * (1.0 + (model_config.oversampling_k - 1) * conversion)


def _clicked_inverse_ctr(model_config: ModelConfig, labels: dict[str, tf.Tensor], ctr_logit: tf.Tensor,
                         seed: tf.Tensor) -> tf.Tensor:
    p_ctr = tf.stop_gradient(tf.sigmoid(ctr_logit))
    return _clicked(model_config, labels, ctr_logit, seed) / tf.maximum(p_ctr, model_config.unbias_min_ctr)


CvrWeights = Callable[[ModelConfig, dict, tf.Tensor, tf.Tensor], tf.Tensor]
# VariantSpec.cvr_weights names one of these: (model config, labels, CTR logit, seed) -> [batch] weights.
CVR_WEIGHTS: dict[str, CvrWeights] = {
    "clicked": _clicked,
    "clicked_and_sampled_negatives": _clicked_and_sampled_negatives,
    "clicked_conversions_k_times": _clicked_conversions_k_times,
    "clicked_inverse_ctr": _clicked_inverse_ctr,
}


def cvr_weights(model_config: ModelConfig, labels: dict[str, tf.Tensor], ctr_logit: tf.Tensor,
                seed: tf.Tensor) -> tf.Tensor:
    """Per-example weights of the CVR loss of a variant that trains CVR on clicks (its spec's ``cvr_weights``)."""
    name = VARIANTS[model_config.variant].cvr_weights
    if name is None:
        raise ValueError(f"variant {model_config.variant!r} does not train CVR on clicked impressions")
    return CVR_WEIGHTS[name](model_config, labels, ctr_logit, seed)


def counterfactual_loss(model_config: ModelConfig, labels: dict[str, tf.Tensor],
                        outputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """ESCM²'s counterfactual CVR risk (``counterfactual_loss``) and, for ``dr``, the imputation loss
    (``imputation_loss``), as the module docstring says; unweighted."""
    spec = VARIANTS[model_config.variant]
    click = tf.cast(labels[LABEL_CLICK], tf.float32)
    propensity = tf.stop_gradient(tf.maximum(tf.sigmoid(outputs["ctr_logit"]), model_config.escm2.propensity_clip))
    inverse = click / propensity
    error = bce_from_logits(labels[LABEL_CONVERSION], outputs["cvr_logit"])
    if spec.counterfactual == "ips":
        return {"counterfactual_loss": tf.reduce_mean(inverse * error)}
    imputed = outputs["imputed_error"]
    residual = error - imputed
    return {"counterfactual_loss": tf.reduce_mean(imputed + inverse * residual),
            "imputation_loss": tf.reduce_mean(inverse * tf.square(residual))}


def variant_loss(model_config: ModelConfig, labels: dict[str, tf.Tensor], outputs: dict[str, tf.Tensor],
                 seed: tf.Tensor) -> dict[str, tf.Tensor]:
    """The variant's scalar ``loss`` and its parts (``VariantSpec.loss_parts``): ``ctr_loss``, ``ctcvr_loss``
    or ``cvr_loss``, and an ESCM² variant's ``counterfactual_loss`` (and ``imputation_loss``).

    seed: int32/int64 [2], the stateless seed of aman's negative sampling (vary it per step).
    """
    spec = VARIANTS[model_config.variant]
    ctr_logit = outputs["ctr_logit"]
    ctr_loss = tf.reduce_mean(bce_from_logits(labels[LABEL_CLICK], ctr_logit))
    label = labels[LOSS_LABELS[spec.loss]]
    if spec.ctcvr_from_towers:
        second = tf.reduce_mean(product_bce_from_logits(label, ctr_logit, outputs["cvr_logit"]))
    elif spec.cvr_weights is None:
        second = tf.reduce_mean(bce_from_logits(label, outputs[f"{spec.second_head}_logit"]))
    else:
        weights = cvr_weights(model_config, labels, ctr_logit, seed)
        second = _weighted_mean(bce_from_logits(label, outputs[f"{spec.second_head}_logit"]), weights)
    loss = model_config.ctr_loss_weight * ctr_loss + model_config.ctcvr_loss_weight * second
    parts = {"ctr_loss": ctr_loss, f"{spec.loss}_loss": second}
    if spec.counterfactual is not None:
        counterfactual = counterfactual_loss(model_config, labels, outputs)
        loss += model_config.escm2.counterfactual_weight * tf.add_n(list(counterfactual.values()))
        parts.update(counterfactual)
    return {"loss": loss, **parts}
