"""Container health probe: ask fl-server's gRPC health service on 127.0.0.1:PORT if it serves.

    python healthcheck.py PORT

Exits 0 when Health/Check answers SERVING within 3 seconds, otherwise 1 with one line on stderr
(Docker reads 1 as unhealthy; 2 is reserved there, so a usage error is 1 as well). PORT is the
server's ``--health-port``; that service is plaintext and bound to loopback only.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEADLINE_SECONDS = 3.0
MAX_PORT = 65535


def check(port: int) -> str | None:
    """Return None when 127.0.0.1:``port`` reports SERVING, else what is wrong, in one line."""
    target = f"127.0.0.1:{port}"
    # No proxy: a probe of loopback must never be sent anywhere else by an http_proxy setting.
    with grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)]) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=DEADLINE_SECONDS)
        except grpc.RpcError as exc:
            details = (exc.details() or "").splitlines()
            reason = details[0] if details else "no details"
            return f"{target}: {exc.code().name}: {reason}"
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        return f"{target}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"
    return None


def main(argv: Sequence[str]) -> int:
    """Probe the port given in ``argv`` and return the exit code."""
    if len(argv) != 1 or not argv[0].isdigit() or not 1 <= int(argv[0]) <= MAX_PORT:
        print("usage: healthcheck.py PORT (the server's --health-port)", file=sys.stderr)
        return 1
    problem = check(int(argv[0]))
    if problem is not None:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
