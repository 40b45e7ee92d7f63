"""Assemble and run one fl-server job: load the task, bind the port, serve, drive the rounds."""

from __future__ import annotations

import errno
import signal
import socket
import threading
from collections.abc import Callable
from concurrent import futures
from types import FrameType

import grpc
import structlog
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fedsilo.common.bundles import ServerBundle, load_server_bundle
from fedsilo.common.errors import ConfigError, FedsiloError, PortInUseError
from fedsilo.common.logging import get_logger
from fedsilo.common.progress import round_progress
from fedsilo.common.stderr_router import routed_stderr
from fedsilo.common.wire import SERVER_PING_POLICY, SERVICE_NAME, channel_options
from fedsilo.server.admin import AdminServer
from fedsilo.server.allocator import tune_for_streams
from fedsilo.server.central_eval import central_evaluator
from fedsilo.server.checkpoint import CHECKPOINT_FILE, Checkpoint, job_identity, load_checkpoint
from fedsilo.server.config import ServerConfig
from fedsilo.server.job import Job, JobOutcome
from fedsilo.server.receive_window import receive_options, stream_window
from fedsilo.server.run_files import MODEL_FILE, finished_rounds
from fedsilo.server.run_lock import hold_run_folder
from fedsilo.server.service import FederationService
from fedsilo.server.status import StatusView
from fedsilo.server.status_metrics import register_state_metrics
from fedsilo.tasks import load_task

SHUTDOWN_GRACE_SECONDS = 5.0
HANDSHAKE_SLOTS = 64


def check_port_free(host: str, port: int, job_id: int) -> None:
    """Raise PortInUseError, naming the port and the job, if ``host:port`` can't be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise PortInUseError(f"cannot bind {host}:{port} for job {job_id}: {exc}") from exc
            raise PortInUseError(
                f"port {port} (port_base + job_id {job_id}) is already in use: another fl-server "
                f"runs job {job_id} here, or another program holds the port; "
                f"choose another --job-id or --port-base"
            ) from exc


def build_server(
    config: ServerConfig, job: Job, health_service: health.HealthServicer
) -> grpc.Server:
    """Create the gRPC server for ``job`` and bind its port (not yet started)."""
    # Room beyond max_clients for streams that have not said Hello yet, so that silent streams
    # (cut off after HANDSHAKE_SECONDS) cannot keep real clients out; admission caps members.
    streams = config.max_clients + HANDSHAKE_SLOTS
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=streams + 4, thread_name_prefix="session"),
        handlers=[FederationService(job).handler()],
        # so_reuseport=0: a second server on the same port must fail, not share it silently.
        options=[
            *channel_options(config.chunk_size),
            *SERVER_PING_POLICY,
            # What uploads in flight may hold of the server's memory (server/receive_window.py).
            *receive_options(stream_window(config)),
            ("grpc.so_reuseport", 0),
        ],
        maximum_concurrent_rpcs=streams,
    )
    address = (
        f"[{config.host}]:{config.port}" if ":" in config.host else (f"{config.host}:{config.port}")
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_service, server)
    try:
        if config.tls is None:
            server.add_insecure_port(address)
        else:
            bundle = load_server_bundle(config.tls)
            credentials = grpc.ssl_server_credentials(
                [(bundle.private_key, bundle.certificate_chain)],
                root_certificates=bundle.root_certificates,
                require_client_auth=True,
            )
            server.add_secure_port(address, credentials)
    except RuntimeError as exc:
        raise PortInUseError(
            f"cannot listen on {address} for job {config.job_id}; "
            f"choose another --job-id or --port-base"
        ) from exc
    return server


def admitted_clients(config: ServerConfig) -> Callable[[], ServerBundle] | None:
    """With TLS, return a reader of the admitted names (re-read at each Hello, so that
    ``fl-certs add-org`` takes effect without a restart); None without TLS."""
    folder = config.tls
    if folder is None:
        return None
    return lambda: load_server_bundle(folder)


def find_checkpoint(
    config: ServerConfig, log: structlog.typing.FilteringBoundLogger
) -> Checkpoint | None:
    """Return the checkpoint to resume from; refuse to start over one without --resume."""
    path = config.run_dir / CHECKPOINT_FILE
    if not path.exists():
        if config.resume:
            log.warning("no_checkpoint_starting_fresh", path=str(path))
        return None
    if not config.resume:
        raise ConfigError(
            f"{config.run_dir} holds a checkpoint of job {config.job_id}; pass --resume to "
            f"continue it, or choose another --out (nothing was changed)"
        )
    identity = job_identity(config)
    return load_checkpoint(path, identity)


def make_job(
    config: ServerConfig,
    log: structlog.typing.FilteringBoundLogger,
    checkpoint: Checkpoint | None,
) -> Job:
    """Load the task, build the initial model and the job, fresh or from ``checkpoint``."""
    task = load_task(config.task, config.task_options)
    model = task.build_model(config.seed)
    central = central_evaluator(task, config.seed, config.central_data)
    job = Job(config, dict(model.state_dict()), log, admitted_clients(config), central=central)
    job.begin(checkpoint)
    return job


def start_admin(admin: AdminServer, config: ServerConfig, job: Job) -> None:
    """Serve the job's status, page and metrics on the admin port."""
    view = StatusView(config, job.state, job.telemetry)
    register_state_metrics(view)
    admin.start(view)


def serve(config: ServerConfig) -> JobOutcome:
    """Run the job to its end and return its outcome. SIGTERM/SIGINT abort it cleanly."""
    # The server decodes many streams at once and trains nothing: freed message buffers must
    # not pile up in allocator arenas (it would cost GiBs with many clients).
    tune_for_streams(config.chunk_size)
    # Folding, unmasking and checking run torch ops on 1 MiB pieces: with a thread pool each
    # op pays the pool's hand-off, ruinous on a busy host (the secure-aggregation mean of a
    # 64 MiB model: 43 s on 2 threads, 0.8 s on 1, 2-core machine at load 12).
    torch.set_num_threads(config.threads)
    log = get_logger(job_id=config.job_id)
    # Before anything touches the run folder: a second server of this job must change nothing.
    check_port_free(config.host, config.port, config.job_id)
    # The admin port too is bound before the run folder is touched: a taken one changes nothing.
    admin = AdminServer(config, log) if config.health_port is not None else None
    try:
        # Whatever its port, a second server on this run folder exits here, changing nothing.
        with (
            hold_run_folder(config.run_dir, config.job_id, config.port),
            routed_stderr({"job_id": config.job_id}),
        ):
            return serve_held(config, log, admin)
    finally:
        if admin is not None:
            admin.stop()


def serve_held(
    config: ServerConfig, log: structlog.typing.FilteringBoundLogger, admin: AdminServer | None
) -> JobOutcome:
    """Run the job whose run folder this process holds; see ``serve``."""
    done = finished_rounds(config.run_dir) if config.resume else None
    if done is not None:
        log.info("job_already_finished", rounds=done, model=str(config.run_dir / MODEL_FILE))
        return JobOutcome(finished=True, rounds_completed=done, already_finished=True)
    job = make_job(config, log, find_checkpoint(config, log))
    health_service = health.HealthServicer()
    server = build_server(config, job, health_service)
    if config.insecure:
        log.warning("insecure_transport", detail="no TLS: traffic and identities are unprotected")
    server.start()
    if admin is not None:
        start_admin(admin, config, job)
    health_service.set("", health_pb2.HealthCheckResponse.SERVING)
    health_service.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "server_listening",
        host=config.host,
        port=config.port,
        task=config.task,
        rounds=config.rounds,
        min_clients=config.min_clients,
        out=str(config.run_dir),
    )

    outcome: list[JobOutcome] = []

    def drive() -> None:
        try:
            with round_progress(config.rounds, job.progress):
                outcome.append(job.run())
        except Exception:
            log.exception("job_crashed")
            raise
        finally:
            health_service.enter_graceful_shutdown()
            if admin is not None:
                admin.stop()
            server.stop(SHUTDOWN_GRACE_SECONDS)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        job.request_stop(f"server stopped by {signal.Signals(signum).name}")

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    coordinator = threading.Thread(target=drive, name="coordinator")
    coordinator.start()
    try:
        server.wait_for_termination()
        coordinator.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not outcome:
        raise FedsiloError("the job coordinator crashed; see the log above")
    return outcome[0]
