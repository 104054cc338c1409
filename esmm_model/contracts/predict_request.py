"""The serving signature's Predict request: what the client sends and what the warmup file replays."""
from __future__ import annotations

from typing import Sequence

from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import predict_pb2

from esmm_model.schema import SERVING_INPUT


def predict_request(examples: Sequence[bytes], model_name: str, signature: str) -> predict_pb2.PredictRequest:
    """A Predict request for ``signature`` of ``model_name``: the serialized tf.Examples as its one input,
    a DT_STRING tensor of shape [n] (the serving signature's contract)."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    tensor = request.inputs[SERVING_INPUT]
    tensor.dtype = types_pb2.DT_STRING
    tensor.tensor_shape.dim.add().size = len(examples)
    tensor.string_val.extend(examples)
    return request
