"""Losses of the ESMM family, computed from logits so they stay finite for any logit.

ESMM: ``ctr_loss_weight · BCE(click, pCTR) + ctcvr_loss_weight · BCE(click AND conversion,
pCTR · pCVR)`` over all impressions; the CVR tower gets no direct loss. The CTCVR term
uses ``log p = log σ(a) + log σ(b)`` and the exact identity
``log(1 - σ(a)σ(b)) = logsumexp(-a, -b, -a-b) - softplus(-a) - softplus(-b)``,
so it neither overflows nor takes log(0) when probabilities are tiny or near one.

The competitors train a CTR network on BCE(click) over all impressions, weighted by
``ctr_loss_weight``, and their second network as follows, weighted by ``ctcvr_loss_weight``:
- ``division``: BCE(click AND conversion, pCTCVR) over all impressions;
- ``base``: BCE(conversion, pCVR) over clicked impressions;
- ``aman``: as base, plus unclicked impressions sampled at ``aman_negative_rate`` as negatives;
- ``oversampling``: as base, with converted impressions weighted ``oversampling_k`` times
  (the same gradient as repeating them k times);
- ``unbias``: as base, each clicked impression weighted by 1 / max(pCTR, ``unbias_min_ctr``),
  pCTR from the CTR network without gradient; the weighted mean is self-normalised.
"""
from __future__ import annotations

import tensorflow as tf

from esmm_model.config import LABEL_CLICK, LABEL_CONVERSION, LABEL_CTCVR, ModelConfig

CVR_ON_CLICKS = ("base", "aman", "oversampling", "unbias")


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


def cvr_weights(model_config: ModelConfig, labels: dict[str, tf.Tensor], ctr_logit: tf.Tensor,
                seed: tf.Tensor) -> tf.Tensor:
    """Per-example weights of the CVR loss for the variants that train CVR on clicks."""
    click = tf.cast(labels[LABEL_CLICK], tf.float32)
    variant = model_config.variant
    if variant == "base":
        return click
    if variant == "aman":
        sampled = tf.random.stateless_uniform(tf.shape(click), seed=seed) < model_config.aman_negative_rate
        return tf.maximum(click, tf.cast(sampled, tf.float32))
    if variant == "oversampling":
        conversion = tf.cast(labels[LABEL_CONVERSION], tf.float32)
        return click * (1.0 + (model_config.oversampling_k - 1) * conversion)
    if variant == "unbias":
        p_ctr = tf.stop_gradient(tf.sigmoid(ctr_logit))
        return click / tf.maximum(p_ctr, model_config.unbias_min_ctr)
    raise ValueError(f"variant {variant!r} does not train CVR on clicked impressions")


def variant_loss(model_config: ModelConfig, labels: dict[str, tf.Tensor], outputs: dict[str, tf.Tensor],
                 seed: tf.Tensor) -> dict[str, tf.Tensor]:
    """The variant's scalar ``loss`` and its two parts (``ctr_loss`` and ``ctcvr_loss`` or ``cvr_loss``).

    seed: int32/int64 [2], the stateless seed of aman's negative sampling (vary it per step).
    """
    ctr_logit = outputs["ctr_logit"]
    ctr_loss = tf.reduce_mean(bce_from_logits(labels[LABEL_CLICK], ctr_logit))
    variant = model_config.variant
    if variant in ("esmm", "esmm_ns"):
        name = "ctcvr_loss"
        second = tf.reduce_mean(product_bce_from_logits(labels[LABEL_CTCVR], ctr_logit, outputs["cvr_logit"]))
    elif variant == "division":
        name = "ctcvr_loss"
        second = tf.reduce_mean(bce_from_logits(labels[LABEL_CTCVR], outputs["ctcvr_logit"]))
    else:
        name = "cvr_loss"
        weights = cvr_weights(model_config, labels, ctr_logit, seed)
        second = _weighted_mean(bce_from_logits(labels[LABEL_CONVERSION], outputs["cvr_logit"]), weights)
    loss = model_config.ctr_loss_weight * ctr_loss + model_config.ctcvr_loss_weight * second
    return {"loss": loss, "ctr_loss": ctr_loss, name: second}
