"""Tells a TLS server from a closed socket, for a plaintext gRPC channel that failed with "Socket closed".

A plaintext client against a TLS port fails with UNAVAILABLE and nothing but "Socket closed" in the
details, the same words a server going down produces. One TLS handshake settles it: a server that
completes one speaks TLS, and the client is misconfigured, not facing an outage.
"""
from __future__ import annotations

import re
import socket
import ssl
from typing import Optional

_SCHEME = re.compile(r"^(dns:(//[^/]*)?/|ipv4:|ipv6:)")
_HOST_PORT = re.compile(r"^\[?(?P<host>[^\]]+?)\]?:(?P<port>\d{1,5})$")


def host_and_port(target: str) -> Optional[tuple[str, int]]:
    """``(host, port)`` of a gRPC target such as ``host:8500``, ``dns:///host:8500`` or ``ipv4:1.2.3.4:8500``;
    None for targets it cannot read (unix sockets, several addresses, no port)."""
    match = _HOST_PORT.match(_SCHEME.sub("", target))
    return (match["host"], int(match["port"])) if match and "," not in target else None


def speaks_tls(target: str, timeout_s: float) -> bool:
    """Whether the server at ``target`` completes a TLS handshake (certificate not checked: only the protocol)."""
    address = host_and_port(target)
    if address is None or timeout_s <= 0:
        return False
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection(address, timeout=timeout_s) as sock:
            with context.wrap_socket(sock, server_hostname=address[0]):
                return True
    except (OSError, ValueError):  # ssl.SSLError is an OSError: refused, reset, or not TLS
        return False
