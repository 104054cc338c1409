"""gRPC balancing without a cluster: two fake TF Serving replicas behind one multi-address target.

A headless Service's DNS name resolves to every pod; an ``ipv4:`` list is the same thing without DNS,
so the client's policy decides, as it would on a cluster, whether its calls reach one replica or all."""
from __future__ import annotations

from concurrent import futures
from contextlib import ExitStack, contextmanager

import grpc
import pytest
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from esmm_model.schema import OUTPUTS, SERVING_INPUT
from serving_client.client import ROUND_ROBIN, PredictionClient, balancing_options


class Replica(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Answers Predict with zeros, reporting its own number as the model version."""

    def __init__(self, number: int):
        self.number = number

    def Predict(self, request, context):
        n = request.inputs[SERVING_INPUT].tensor_shape.dim[0].size
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = self.number
        for name in OUTPUTS:
            response.outputs[name].dtype = types_pb2.DT_FLOAT
            response.outputs[name].float_val.extend([0.0] * n)
        return response


@contextmanager
def replica(number: int):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Replica(number), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(None)


@pytest.fixture(scope="module")
def two_replicas():
    with ExitStack() as stack:
        yield [stack.enter_context(replica(n)) for n in (1, 2)]


def versions_reached(target: str, calls: int, **kwargs) -> list[int]:
    with PredictionClient(target, "esmm", timeout_s=5.0, **kwargs) as client:
        return [client.predict([b"x"]).model_version for _ in range(calls)]


def test_a_multi_address_target_spreads_calls_over_every_replica(two_replicas):
    target = "ipv4:" + ",".join(f"127.0.0.1:{port}" for port in two_replicas)
    reached = versions_reached(target, 40)
    assert set(reached[10:]) == {1, 2}  # once both connections are up, both replicas serve
    # the default policy (pick_first), which the client had before: one replica takes everything
    stuck = versions_reached(target, 40, channel_options=[("grpc.lb_policy_name", "pick_first")])
    assert len(set(stuck)) == 1


def test_round_robin_only_where_the_target_can_resolve_to_several_addresses():
    assert balancing_options("dns:///esmm-serving-grpc.esmm.svc.cluster.local:8500") == [
        ("grpc.service_config", ROUND_ROBIN)]
    assert balancing_options("esmm-serving.esmm.svc:8500") == []  # a ClusterIP: one virtual address
    # the caller's own choice of policy wins
    assert balancing_options("dns:///x:8500", [("grpc.lb_policy_name", "pick_first")]) == []
