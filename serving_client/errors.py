"""The serving client's two error types: bad candidate input, and a failed gRPC call."""
from __future__ import annotations

import grpc

from esmm_model.errors import EsmmError


class PackingError(EsmmError):
    """A candidate or shared feature cannot be packed; the message names the candidate and the field."""


class ServingError(EsmmError):
    """A gRPC call to the model server failed; carries the final gRPC status code and details."""

    def __init__(self, method: str, target: str, code: grpc.StatusCode, details: str, attempts: int) -> None:
        self.method = method
        self.target = target
        self.code = code
        self.details = details
        self.attempts = attempts
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        super().__init__(f"{method} on {target} failed{tries}: {code.name}: {details}")
