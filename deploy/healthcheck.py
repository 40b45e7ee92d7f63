"""Container health probe: ask fl-server's admin port on 127.0.0.1:PORT whether the job serves.

    python healthcheck.py PORT

Exits 0 when GET /healthz answers 200 within 3 seconds, otherwise 1 with one line on stderr
(Docker reads 1 as unhealthy; 2 is reserved there, so a usage error is 1 as well). PORT is the
server's ``--health-port``, its admin port: plaintext HTTP on loopback only (the status page,
/status and /metrics are served there too). Standard library only, so that any Python runs it.
"""

from __future__ import annotations

import http.client
import sys
from collections.abc import Sequence

DEADLINE_SECONDS = 3.0
MAX_PORT = 65535


def check(port: int) -> str | None:
    """Return None when 127.0.0.1:``port`` reports serving, else what is wrong, in one line."""
    target = f"127.0.0.1:{port}"
    # http.client, not urllib: a probe of loopback must never go through an http_proxy setting.
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=DEADLINE_SECONDS)
    try:
        connection.request("GET", "/healthz")
        response = connection.getresponse()
        response.read(4096)
    except OSError as exc:
        return f"{target}: {exc.strerror or exc}"
    except http.client.HTTPException as exc:
        return f"{target}: not an admin port ({exc or type(exc).__name__})"
    finally:
        connection.close()
    if response.status != 200:
        return f"{target}: /healthz answered HTTP {response.status}"
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
