"""The admin port: a read-only HTTP server for people and Prometheus, one per job.

    GET /          the status page (server/static/, shipped in the package; nothing fetched)
    GET /status    what the job is doing, as JSON (server/status.py)
    GET /metrics   Prometheus exposition of the job's own registry (server/telemetry.py)
    GET /healthz   200 once the job serves

On loopback (the default) it speaks plaintext, and it answers only requests whose Host is a
loopback name, so that a web page elsewhere cannot read it through DNS rebinding. Anywhere
else it needs the federation's mutual TLS: the server bundle's certificate and key, and a
client certificate issued by the same CA (ServerConfig refuses the address without --tls).
Each connection has its own thread (stdlib ThreadingHTTPServer), its TLS handshake included,
and a socket timeout, so a slow or silent peer holds up nobody.
"""

from __future__ import annotations

import errno
import json
import socket
import ssl
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from fedsilo.common.bundles import CA_CERT, SERVER_CERT, SERVER_KEY, load_server_bundle
from fedsilo.common.errors import ConfigError, PortInUseError
from fedsilo.server.config import ServerConfig, is_loopback
from fedsilo.server.status import StatusView

Log = structlog.typing.FilteringBoundLogger

SOCKET_TIMEOUT_SECONDS = 10.0
# Files of the page, by URL path; nothing else is ever read from the package.
ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/status.js": ("status.js", "text/javascript; charset=utf-8"),
    "/static/status.css": ("status.css", "text/css; charset=utf-8"),
    "/static/favicon.svg": ("favicon.svg", "image/svg+xml"),
    "/favicon.ico": ("favicon.svg", "image/svg+xml"),
}
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
}


def load_assets() -> dict[str, tuple[bytes, str]]:
    """Read the page's files from the installed package, by URL path."""
    folder = resources.files("fedsilo.server") / "static"
    return {path: ((folder / name).read_bytes(), kind) for path, (name, kind) in ASSETS.items()}


def tls_context(bundle: Path) -> ssl.SSLContext:
    """Return a server context that requires a client certificate of the bundle's CA."""
    load_server_bundle(bundle)  # one-line errors for missing files or a readable key
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(bundle / CA_CERT))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        context.load_cert_chain(bundle / SERVER_CERT, bundle / SERVER_KEY)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"{bundle}: cannot use the server certificate: {exc}") from exc
    return context


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a request in flight never keeps the process alive
    block_on_close = False

    def __init__(
        self, address: tuple[str, int], tls: ssl.SSLContext | None, log: Log, loopback: bool
    ) -> None:
        self.tls = tls
        self.log = log
        self.loopback = loopback
        self.view: StatusView | None = None
        self.assets = load_assets()
        super().__init__(address, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Handle one connection on its own thread; the TLS handshake happens here too."""
        request.settimeout(SOCKET_TIMEOUT_SECONDS)
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        try:
            secured = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            self.log.info("admin_tls_refused", peer=client_address[0], reason=str(exc))
            return
        try:
            super().finish_request(secured, client_address)
        finally:
            secured.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log a connection that broke (a peer that hung up mid-answer) instead of printing."""
        self.log.info("admin_connection_failed", peer=client_address[0], exc_info=True)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive for a page that polls
    timeout = SOCKET_TIMEOUT_SECONDS
    server_version = "fedsilo-admin"
    sys_version = ""

    def do_GET(self) -> None:
        """Answer one GET."""
        if self.server.loopback and not self._host_is_loopback():
            self._send_json(HTTPStatus.FORBIDDEN, {"error": "Host must be a loopback name"})
            return
        path = urlsplit(self.path).path
        asset = self.server.assets.get("/" if path == "/index.html" else path)
        if asset is not None:
            self._send(HTTPStatus.OK, *asset)
            return
        routes: dict[str, Callable[[StatusView], None]] = {
            "/status": self._status,
            "/metrics": self._metrics,
            "/healthz": self._healthz,
        }
        route = routes.get(path)
        if route is None:
            self._send_json(HTTPStatus.NOT_FOUND, {"error": f"no such page: {path}"})
            return
        view = self.server.view
        assert view is not None, "serving starts with a view"
        try:
            route(view)
        except Exception:
            self.server.log.exception("admin_request_failed", path=path)
            self._send_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "see the server log"})

    def _refuse_method(self) -> None:
        self._send_json(
            HTTPStatus.METHOD_NOT_ALLOWED, {"error": "read-only: GET only"}, {"Allow": "GET"}
        )

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse_method  # noqa: N815

    def _status(self, view: StatusView) -> None:
        self._send_json(HTTPStatus.OK, view.status())

    def _metrics(self, view: StatusView) -> None:
        self._send(HTTPStatus.OK, generate_latest(view.telemetry.registry), CONTENT_TYPE_LATEST)

    def _healthz(self, view: StatusView) -> None:
        self._send_json(HTTPStatus.OK, {"status": "serving"})

    def _host_is_loopback(self) -> bool:
        host = self.headers.get("Host", "")
        name = urlsplit(f"//{host}").hostname or ""
        return is_loopback(name)

    def _send_json(
        self, status: HTTPStatus, body: Any, headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(body, allow_nan=False).encode()
        self._send(status, data, "application/json", headers)

    def _send(
        self, status: HTTPStatus, data: bytes, kind: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        for name, value in {**SECURITY_HEADERS, **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Log through structlog, never as a plain line on stderr."""
        self.server.log.debug("admin_request", peer=self.client_address[0], line=format % args)


class AdminServer:
    """The admin port of one job: bound before the job starts, serving once it exists."""

    def __init__(self, config: ServerConfig, log: Log) -> None:
        host, port = config.health_host, config.health_port
        assert port is not None, "the admin port is off"
        loopback = is_loopback(host)
        # ServerConfig makes sure --tls is given whenever the address is not loopback.
        tls = None if loopback or config.tls is None else tls_context(config.tls)
        server_class = _Server6 if ":" in host else _Server
        try:
            self._server = server_class((host.strip("[]"), port), tls, log, loopback)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError(
                    f"admin port {port} on {host} is already in use; choose another --health-port"
                ) from exc
            raise ConfigError(f"cannot listen on {host}:{port} (--health-host): {exc}") from exc
        self.tls = tls is not None
        self._thread: threading.Thread | None = None
        self._log = log

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Where a browser finds the status page."""
        host = str(self._server.server_address[0])
        shown = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls else 'http'}://{shown}:{self.port}/"

    def start(self, view: StatusView) -> None:
        """Serve ``view`` on a thread of its own until ``stop``."""
        self._server.view = view
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="admin", kwargs={"poll_interval": 0.1}
        )
        self._thread.daemon = True
        self._thread.start()
        self._log.info("admin_listening", url=self.url, tls=self.tls)

    def stop(self) -> None:
        """Stop serving and close the port (requests in flight finish on their own threads).

        Idempotent: the job's end stops it, and so does the way out of ``serve``.
        """
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()
