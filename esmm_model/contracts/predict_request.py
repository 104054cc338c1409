"""The serving signatures' Predict requests: what the client sends and what the warmup file replays."""
from __future__ import annotations

from typing import Sequence

from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import predict_pb2

from esmm_model.config import Config
from esmm_model.schema import CONTEXT_INPUT, SERVING_INPUT, feature_spec


def _strings(request: predict_pb2.PredictRequest, name: str, values: Sequence[bytes]) -> None:
    tensor = request.inputs[name]
    tensor.dtype = types_pb2.DT_STRING
    tensor.tensor_shape.dim.add().size = len(values)
    tensor.string_val.extend(values)


def predict_request(examples: Sequence[bytes], model_name: str, signature: str, *,
                    context: bytes | None = None) -> predict_pb2.PredictRequest:
    """A Predict request for ``signature`` of ``model_name``: the serialized tf.Examples as the input
    ``examples``, a DT_STRING tensor of shape [n] (the serving signature's contract). With ``context``
    (the ranking signature's contract), the request's shared features as one serialized tf.Example, sent
    as the input ``context`` of the same shape [n], one copy per candidate: TF Serving's batching requires
    every input of a request to have the same first dimension, and may split a request between batches."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    _strings(request, SERVING_INPUT, examples)
    if context is not None:
        _strings(request, CONTEXT_INPUT, [context] * len(examples))
    return request


def split_example(config: Config, example: bytes) -> tuple[bytes, bytes]:
    """A merged serialized tf.Example as (its shared features, the candidate's own features), each a serialized
    tf.Example: the two inputs of the ranking signature for that row. Keys of no feature are dropped."""
    from tensorflow.core.example import example_pb2

    merged = example_pb2.Example.FromString(example)
    parts = []
    for shared in (True, False):
        part = example_pb2.Example()
        for key in feature_spec(config, labels=False, shared=shared):
            if key in merged.features.feature:
                part.features.feature[key].CopyFrom(merged.features.feature[key])
        parts.append(part.SerializeToString(deterministic=True))
    return parts[0], parts[1]
