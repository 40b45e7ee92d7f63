"""An emulated WAN link between two network namespaces: the server's and the client's.

The kernel here has no netem (``tc qdisc add ... netem`` answers "Specified qdisc kind is
unknown"), so the link is ``bench/wan/delayline.c``: a user-space delay line over two TUN
devices, one in each namespace, that serializes packets at the link's rate behind a
bottleneck buffer of one bandwidth-delay product, delays each by half the RTT and drops each
with the profile's loss probability, both ways. It runs SCHED_FIFO so that the box's other
load does not stretch the delay. A packet-level emulator, not a TCP relay: a relay would end
each TCP connection at the relay and hide the very windows and buffers this measures.

    with Link(PROFILES["1g-50ms"]) as link:
        link.set_buffers(BUFFERS["32mib"])
        subprocess.run([*link.exec_prefix(link.server_ns), "python", ...])

The TCP settings that matter are set inside both namespaces (they are per namespace): the
congestion control, ``tcp_wmem``/``tcp_rmem``, and ``tcp_no_metrics_save = 1`` so that each
fresh connection starts afresh instead of from what the previous trial left in the route
cache. ``net.core.wmem_max``/``rmem_max`` and the list of congestion controls a namespace may
choose are the host's own: they are changed only when asked, and put back on exit. Needs root
and iproute2; ``available()`` says why not.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "delayline.c"
BUILT = HERE.parent.parent / "build" / "delayline"
SERVER_ADDRESS, CLIENT_ADDRESS = "10.216.0.1", "10.216.0.2"
MIB = 1 << 20


@dataclass(frozen=True)
class Profile:
    """A link: round-trip time, rate (both ways), random loss (each way) and TCP's algorithm."""

    name: str
    rtt_ms: float
    rate_mbit: float
    loss: float = 0.0
    congestion_control: str = "cubic"
    queue_bytes: int | None = None  # the bottleneck's buffer; None: one bandwidth-delay product

    def describe(self) -> str:
        """E.g. '1000 Mbit/s, 50 ms RTT, no loss, cubic'."""
        loss = f"{self.loss * 100:g} % loss" if self.loss else "no loss"
        return (
            f"{self.rate_mbit:g} Mbit/s, {self.rtt_ms:g} ms RTT, {loss}, {self.congestion_control}"
        )


@dataclass(frozen=True)
class Buffers:
    """Socket-buffer sysctls: tcp_wmem/tcp_rmem (per namespace), net.core.*mem_max (host)."""

    name: str
    tcp_wmem: str
    tcp_rmem: str
    core_max: int | None = None  # net.core.wmem_max and rmem_max; None: leave the host's

    def sysctl_lines(self) -> list[str]:
        """The lines of /etc/sysctl.d that give these settings."""
        lines = [f"net.ipv4.tcp_wmem = {self.tcp_wmem}", f"net.ipv4.tcp_rmem = {self.tcp_rmem}"]
        if self.core_max is not None:
            lines += [
                f"net.core.wmem_max = {self.core_max}",
                f"net.core.rmem_max = {self.core_max}",
            ]
        return lines


PROFILES = {
    "1g-50ms": Profile("1g-50ms", rtt_ms=50, rate_mbit=1000),
    "200m-80ms-loss": Profile(
        "200m-80ms-loss", rtt_ms=80, rate_mbit=200, loss=0.001, congestion_control="bbr"
    ),
}
# Linux's own defaults for tcp_wmem (max 4 MiB) and tcp_rmem (max 6 MiB), leaving the host's
# net.core.*mem_max (they bound only a program that sets SO_SNDBUF/SO_RCVBUF itself); the same
# with Linux's default core maxima (212,992 bytes); and 32 MiB for all four.
BUFFERS = {
    "stock": Buffers("stock", "4096 16384 4194304", "4096 131072 6291456"),
    "linux-default": Buffers(
        "linux-default", "4096 16384 4194304", "4096 131072 6291456", core_max=212992
    ),
    "32mib": Buffers("32mib", "4096 16384 33554432", "4096 131072 33554432", core_max=32 * MIB),
}


def available() -> str | None:
    """None if links can be made here; else why not (one line)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, TUN devices, sysctls)"
    for tool in ("ip", "cc"):
        if shutil.which(tool) is None:
            return f"needs {tool!r} on PATH"
    if not Path("/dev/net/tun").exists():
        return "needs /dev/net/tun"
    return None


def ensure_delayline(target: Path = BUILT) -> Path:
    """Compile delayline.c to ``target`` unless it is there and newer than the source."""
    if target.exists() and target.stat().st_mtime >= SOURCE.stat().st_mtime:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["cc", "-O2", "-Wall", "-Wextra", "-o", str(target), str(SOURCE)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return target


def run(*argv: str) -> str:
    """Run a command; raise with its stderr if it fails; return its stdout."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout


def host_sysctl(key: str) -> str:
    """A sysctl of the host (the namespace this process runs in)."""
    return Path("/proc/sys", *key.split(".")).read_text().strip()


@dataclass
class Link:
    """The two namespaces and the delay line between them; a context manager."""

    profile: Profile
    delayline: Path = BUILT
    tag: str = field(default_factory=lambda: f"wan{os.getpid() % 100000}")
    stats: dict[str, Any] = field(default_factory=dict)
    _namespaces: list[str] = field(default_factory=list)
    _host_saved: dict[str, str] = field(default_factory=dict)
    _process: subprocess.Popen[str] | None = None

    @property
    def server_ns(self) -> str:
        """The server's namespace."""
        return f"{self.tag}-srv"

    @property
    def client_ns(self) -> str:
        """The client's namespace."""
        return f"{self.tag}-cli"

    @property
    def server_address(self) -> str:
        """The server's address, as the client reaches it."""
        return SERVER_ADDRESS

    def exec_prefix(self, ns: str) -> list[str]:
        """Command prefix that runs a program inside namespace ``ns``."""
        return ["ip", "netns", "exec", ns]

    def __enter__(self) -> Link:
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def _create(self) -> None:
        for ns in (self.server_ns, self.client_ns):
            run("ip", "netns", "add", ns)
            self._namespaces.append(ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
            # IPv4 only: no IPv6 chatter (router solicitations) on the link
            self._sysctl(ns, "net.ipv6.conf.default.disable_ipv6", "1")
        self._start_delayline()
        ends = ((self.server_ns, "wans", SERVER_ADDRESS, CLIENT_ADDRESS),)
        ends += ((self.client_ns, "wanc", CLIENT_ADDRESS, SERVER_ADDRESS),)
        for ns, device, mine, peer in ends:
            run("ip", "-n", ns, "addr", "add", mine, "peer", peer, "dev", device)
            # a long device queue: the emulator's buffer, not the kernel's, is the bottleneck's
            run("ip", "-n", ns, "link", "set", device, "up", "mtu", "1500", "txqueuelen", "10000")
        cc = self.profile.congestion_control
        allowed = host_sysctl("net.ipv4.tcp_allowed_congestion_control").split()
        if cc not in allowed:  # a namespace may only pick from the host's allowed list
            self._set_host("net.ipv4.tcp_allowed_congestion_control", " ".join([*allowed, cc]))
        for ns in self._namespaces:
            self._sysctl(ns, "net.ipv4.tcp_congestion_control", cc)
            self._sysctl(ns, "net.ipv4.tcp_no_metrics_save", "1")

    def _start_delayline(self) -> None:
        profile = self.profile
        self._process = subprocess.Popen(
            [
                str(self.delayline),
                "--a",
                f"{self.server_ns}:wans",
                "--b",
                f"{self.client_ns}:wanc",
                "--delay-ms",
                f"{profile.rtt_ms / 2:g}",
                "--rate-mbit",
                f"{profile.rate_mbit:g}",
                "--loss",
                f"{profile.loss:g}",
                *(["--queue-bytes", str(profile.queue_bytes)] if profile.queue_bytes else []),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert self._process.stdout is not None
        ready, _, _ = select.select([self._process.stdout], [], [], 10)
        if not ready or self._process.stdout.readline().strip() != "ready":
            raise RuntimeError(f"delayline did not start: {self._stop_delayline()}")

    def _sysctl(self, ns: str, key: str, value: str) -> None:
        run("ip", "netns", "exec", ns, "sysctl", "-q", "-w", f"{key}={value}")

    def _set_host(self, key: str, value: str) -> None:
        self._host_saved.setdefault(key, host_sysctl(key))
        Path("/proc/sys", *key.split(".")).write_text(value)

    def set_tcp(self, key: str, value: str) -> None:
        """Set a per-namespace sysctl (e.g. net.ipv4.tcp_congestion_control) on both ends."""
        for ns in self._namespaces:
            self._sysctl(ns, key, value)

    def set_buffers(self, buffers: Buffers) -> None:
        """Apply ``buffers`` in both namespaces (and net.core.*mem_max on the host if given)."""
        self.set_tcp("net.ipv4.tcp_wmem", buffers.tcp_wmem)
        self.set_tcp("net.ipv4.tcp_rmem", buffers.tcp_rmem)
        for key in ("net.core.wmem_max", "net.core.rmem_max"):
            if buffers.core_max is not None:
                self._set_host(key, str(buffers.core_max))
            elif key in self._host_saved:
                Path("/proc/sys", *key.split(".")).write_text(self._host_saved[key])

    def kernel_drops(self) -> dict[str, int]:
        """Packets the kernel dropped on each TUN device's transmit queue (should be 0)."""
        drops = {}
        for ns, device in ((self.server_ns, "wans"), (self.client_ns, "wanc")):
            out = run(
                "ip", "netns", "exec", ns, "cat", f"/sys/class/net/{device}/statistics/tx_dropped"
            )
            drops[device] = int(out.strip())
        return drops

    def _stop_delayline(self) -> str:
        process, self._process = self._process, None
        if process is None:
            return ""
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
        try:
            out, err = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate(timeout=10)
        for line in out.splitlines():
            if line.startswith("{"):
                self.stats = json.loads(line)
        return err.strip()

    def close(self) -> None:
        """Stop the delay line, remove the namespaces, put the host's sysctls back."""
        drops = None
        if self._process is not None and self._namespaces:
            with contextlib.suppress(RuntimeError):  # a device already gone: no figure
                drops = self.kernel_drops()
        self._stop_delayline()
        if drops is not None:
            self.stats["kernel_tx_drops"] = drops
        for ns in reversed(self._namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30, check=False)
        self._namespaces.clear()
        for key, value in self._host_saved.items():
            Path("/proc/sys", *key.split(".")).write_text(value)
        self._host_saved.clear()
