"""The feature contract: what a caller in any language must send to the serving signature, as JSON.

A ranking service in Java or Go builds the same Predict request as ``serving_client`` without
this codebase: one serialized ``tf.Example`` per candidate in the DT_STRING input ``examples`` (or, for
the ``rank`` signature, the shared features in ``context`` and the candidate's own in ``examples``).
Each feature entry says which tf.Example keys carry it, in which list type, how many values, and
whether it is shared by every candidate of a request (user and context features: the Python
packer encodes them once and appends each candidate's item features) or the candidate's own.
The training step writes it next to the model (``write_feature_contract``); it is derived from
the feature config and the raw parsing spec (``esmm_model.schema``), so it cannot drift from them.
"""
from __future__ import annotations

import json
from typing import Any

from esmm_model.config import Config, Feature
from esmm_model.schema import (
    CONTEXT_INPUT,
    OUTPUTS,
    RANK_SIGNATURE,
    SERVING_INPUT,
    SERVING_SIGNATURE,
    default_value,
    is_shared,
)

CONTRACT = "esmm.feature_contract"
CONTRACT_VERSION = 1
FILE_NAME = "feature_contract.json"


def _list(feature: Feature) -> str:
    return "int64_list" if feature.dtype == "int64" else "bytes_list"


def _missing(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def feature_entry(feature: Feature) -> dict[str, Any]:
    """One feature's tf.Example keys, list types and value counts, and whether it is shared per request."""
    if feature.kind == "weighted_ids":
        keys = [{"key": feature.name, "list": _list(feature), "values": "any"},
                {"key": feature.weight_name, "list": "float_list", "values": "same count as " + feature.name}]
        missing = "leave both keys out: no ids"
    elif feature.kind == "dense":
        keys = [{"key": feature.name, "list": "float_list", "values": "one"}]
        missing = f"leave the key out: parsed as {default_value(feature)!r}"
    else:
        keys = [{"key": feature.name, "list": _list(feature), "values": "one"}]
        missing = f"leave the key out: parsed as {_missing(default_value(feature))!r}"
    return {"name": feature.name, "kind": feature.kind, "side": feature.side,
            "shared_per_request": is_shared(feature),
            "dtype": "float32" if feature.kind == "dense" else feature.dtype, "keys": keys, "missing": missing}


def feature_contract(config: Config) -> dict[str, Any]:
    """The contract of ``config``'s serving signature, as a JSON-ready dict."""
    return {
        "contract": CONTRACT,
        "version": CONTRACT_VERSION,
        "config": config.name,
        "model_name": config.push.model_name,
        "signature": {"name": SERVING_SIGNATURE, "input": SERVING_INPUT, "input_dtype": "DT_STRING",
                      "input_shape": [-1], "outputs": {name: {"dtype": "DT_FLOAT", "shape": [-1]} for name in OUTPUTS}},
        "request": ("one serialized tf.Example per candidate, in ranking order; each holds the shared_per_request "
                    "features (the same for every candidate) and the candidate's own features; outputs come back "
                    "in the same order"),
        "rank_signature": {
            "name": RANK_SIGNATURE, "inputs": {name: {"dtype": "DT_STRING", "shape": [-1]}
                                               for name in (CONTEXT_INPUT, SERVING_INPUT)},
            "request": (f"the same outputs for less server CPU: {CONTEXT_INPUT!r} holds the shared_per_request "
                        f"features as one serialized tf.Example, repeated once per candidate (both inputs must have "
                        f"the candidates' count, as TF Serving's batching requires), and {SERVING_INPUT!r} each "
                        f"candidate's own features; the model parses and embeds each distinct context once"),
        },
        "features": [feature_entry(feature) for feature in config.features],
    }


def write_feature_contract(config: Config, path: str) -> dict[str, Any]:
    """Writes ``config``'s contract as JSON to ``path`` (a local path or a URI tf.io.gfile writes);
    returns it."""
    import tensorflow as tf

    contract = feature_contract(config)
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(json.dumps(contract, indent=2, sort_keys=True) + "\n")
    return contract
