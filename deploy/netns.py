"""Hosts in Linux network namespaces: one for the server, one per organisation.

Each organisation reaches only the server, over its own veth pair (10.213.<i>.2 -> 10.213.<i>.1).
Everything lives inside namespaces the caller creates and removes; no other address is touched.
Used by the integration tests (through ``tests/integration/netns.py``) and by
``deploy/netns_federation.py``; needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) and ``ip``/``tc``.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field


def ip(*args: str) -> None:
    """Run an ``ip`` command; raise CalledProcessError with its stderr on failure."""
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@dataclass
class Topology:
    """A server namespace and ``orgs`` organisation namespaces, each with its own link."""

    orgs: int
    tag: str = field(default_factory=lambda: f"fs{os.getpid() % 100000}")
    created: list[str] = field(default_factory=list)

    @property
    def server_ns(self) -> str:
        """The server's namespace."""
        return f"{self.tag}-srv"

    def org_ns(self, org: int) -> str:
        """Organisation ``org``'s namespace (organisations count from 1)."""
        return f"{self.tag}-org{org}"

    def org_link(self, org: int) -> str:
        """The organisation's end of its link (inside its namespace)."""
        return f"{self.tag}o{org}"

    def server_address(self, org: int) -> str:
        """The address at which organisation ``org`` reaches the server."""
        return f"10.213.{org}.1"

    def org_address(self, org: int) -> str:
        """Organisation ``org``'s own address, the only one in its namespace besides loopback."""
        return f"10.213.{org}.2"

    def create(self) -> None:
        """Create the namespaces and links; raises if this machine does not allow it."""
        for ns in (self.server_ns, *(self.org_ns(i) for i in range(1, self.orgs + 1))):
            ip("netns", "add", ns)
            self.created.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
        for org in range(1, self.orgs + 1):
            server_end, org_end = f"{self.tag}s{org}", self.org_link(org)
            ip("link", "add", server_end, "type", "veth", "peer", "name", org_end)
            ip("link", "set", server_end, "netns", self.server_ns)
            ip("link", "set", org_end, "netns", self.org_ns(org))
            server_ip, org_ip = self.server_address(org), self.org_address(org)
            ip("-n", self.server_ns, "addr", "add", f"{server_ip}/24", "dev", server_end)
            ip("-n", self.org_ns(org), "addr", "add", f"{org_ip}/24", "dev", org_end)
            ip("-n", self.server_ns, "link", "set", server_end, "up")
            ip("-n", self.org_ns(org), "link", "set", org_end, "up")

    def destroy(self) -> None:
        """Remove every namespace created (their links go with them)."""
        for ns in reversed(self.created):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True, timeout=30)
        self.created.clear()

    def exec_prefix(self, ns: str) -> list[str]:
        """Command prefix that runs a program inside namespace ``ns``."""
        return ["ip", "netns", "exec", ns]

    def cut(self, org: int) -> None:
        """Partition organisation ``org`` from the server."""
        ip("-n", self.org_ns(org), "link", "set", self.org_link(org), "down")

    def heal(self, org: int) -> None:
        """Reconnect organisation ``org``."""
        ip("-n", self.org_ns(org), "link", "set", self.org_link(org), "up")

    def throttle(self, org: int, rate: str) -> None:
        """Limit what organisation ``org`` sends to ``rate`` (tc tbf), e.g. '20mbit'."""
        subprocess.run(
            [
                *self.exec_prefix(self.org_ns(org)),
                "tc",
                "qdisc",
                "replace",
                "dev",
                self.org_link(org),
                "root",
                "tbf",
                "rate",
                rate,
                "burst",
                "32kbit",
                "latency",
                "400ms",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )

    def unthrottle(self, org: int) -> None:
        """Remove the rate limit of organisation ``org``."""
        subprocess.run(
            [
                *self.exec_prefix(self.org_ns(org)),
                "tc",
                "qdisc",
                "del",
                "dev",
                self.org_link(org),
                "root",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
