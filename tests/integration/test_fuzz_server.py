"""Fuzzing a live fl-server: random message sequences on real streams, raw garbage bytes and an
HTTP/1.1 request on its port, while a real client trains round after round. The server must
answer or drop each bad stream and keep serving the job; nothing may reach its error handler."""

from __future__ import annotations

import queue
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.specs import header_of, specs_of
from fedsilo.common.wire import PROTOCOL_VERSION, SESSION_METHOD_PATH
from fedsilo.tasks.builtin.synthetic import SyntheticTask
from tests.integration.conftest import Daemons, free_port, wait_for

JOB = 9
EXAMPLES = 120
_END = object()
MODEL_HEADER = header_of(specs_of(SyntheticTask().build_model(0).state_dict()))

names = st.sampled_from(["fuzz-a", "fuzz-b", "", "x" * 200, "bad name", "fuzz-a\n"])
headers = st.one_of(
    st.just(MODEL_HEADER),
    st.builds(
        lambda dims, dtype, nbytes: pb.TensorStreamHeader(
            tensors=[pb.TensorSpec(name="weight", dtype=dtype, shape=dims, nbytes=nbytes)],
            total_bytes=nbytes,
        ),
        st.lists(st.integers(0, 2**40), max_size=4),
        st.sampled_from(["float32", "bfloat16", "nope", ""]),
        st.integers(0, 2**40),
    ),
)
messages = st.one_of(
    st.builds(
        lambda version, job, name: pb.ClientMessage(
            hello=pb.Hello(protocol_version=version, job_id=job, client_name=name)
        ),
        st.sampled_from([PROTOCOL_VERSION, 0, 7]),
        st.sampled_from([JOB, JOB + 1]),
        names,
    ),
    st.builds(lambda n: pb.ClientMessage(ready=pb.Ready(train_examples=n)), st.integers(0, 99)),
    st.builds(
        lambda r, n, h: pb.ClientMessage(
            send_model=pb.SendModel(round=r, train_examples=n, update=h)
        ),
        st.integers(0, 5),
        st.integers(0, 50),
        headers,
    ),
    st.builds(lambda d: pb.ClientMessage(chunk=pb.TensorChunk(data=d)), st.binary(max_size=3000)),
    st.builds(
        lambda c: pb.ClientMessage(trailer=pb.TensorStreamTrailer(checksum=c)),
        st.integers(0, 2**64 - 1),
    ),
    st.just(pb.ClientMessage(heartbeat=pb.Heartbeat())),
    st.builds(lambda m: pb.ClientMessage(error=pb.Error(code=pb.INTERNAL, message=m)), st.text()),
    st.builds(lambda r: pb.ClientMessage(eval_result=pb.EvalResult(round=r)), st.integers(0, 9)),
    st.binary(max_size=300),  # not a message at all
)
# Often start like a real client so that the fuzz reaches the round and upload paths.
opening = st.sampled_from(
    [
        [],
        [
            pb.ClientMessage(
                hello=pb.Hello(protocol_version=PROTOCOL_VERSION, client_name="fuzz-a")
            ),
            pb.ClientMessage(ready=pb.Ready(train_examples=5)),
        ],
    ]
)


def run_stream(channel: grpc.Channel, sequence: list[object]) -> int:
    """Send a sequence on one stream, half-close, and read until the server ends it."""
    outbox: queue.SimpleQueue[object] = queue.SimpleQueue()
    for item in sequence:
        outbox.put(item)
    outbox.put(_END)

    def requests() -> Iterator[object]:
        while (item := outbox.get()) is not _END:
            yield item

    call = channel.stream_stream(
        SESSION_METHOD_PATH,
        request_serializer=lambda m: m if isinstance(m, bytes) else m.SerializeToString(),
        response_deserializer=pb.ServerMessage.FromString,
    )(requests(), timeout=30)
    received = 0
    try:
        for _ in call:
            received += 1
    except grpc.RpcError as exc:
        assert exc.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.OK), exc
    return received


def test_fuzzed_streams_garbage_and_http_leave_the_job_running(
    daemons: Daemons, tmp_path: Path
) -> None:
    port = free_port()
    server = daemons.server(
        JOB,
        port - JOB,
        "--min-clients",
        "1",
        "--rounds",
        "100000",
        "--round-timeout",
        "20",
        "--progress-timeout",
        "5",
        "--out",
        str(tmp_path / "run"),
    )
    steady = daemons.client(port, "steady-org")
    wait_for(lambda: server.has_event("round_done"), 60, "the first round")

    for payload in (b"GET / HTTP/1.1\r\nHost: fedsilo\r\n\r\n", bytes(range(256)) * 8):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            raw.sendall(payload)
            raw.settimeout(10)
            try:
                while raw.recv(4096):
                    pass
            except (TimeoutError, ConnectionResetError):
                pass

    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    counter = {"streams": 0, "messages": 0}
    lock = threading.Lock()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(opening, st.lists(messages, max_size=10))
    def fuzz(start: list[object], sequence: list[object]) -> None:
        run_stream(channel, [*start, *sequence])
        with lock:
            counter["streams"] += 1
            counter["messages"] += len(start) + len(sequence)

    try:
        fuzz()
    finally:
        channel.close()
    print(f"FUZZ streams={counter['streams']} messages={counter['messages']}")

    rounds_before = sum(1 for line in server.log_lines() if line.get("event") == "round_done")
    wait_for(
        lambda: (
            sum(1 for line in server.log_lines() if line.get("event") == "round_done")
            > rounds_before + 2
        ),
        60,
        "rounds to go on after the fuzzing",
    )
    assert steady.process.poll() is None
    server.process.send_signal(signal.SIGTERM)
    assert server.wait(timeout=60) == 0, server.tail()
    text = server.stderr.read_text()
    assert "session_internal_error" not in text and "Traceback" not in text
    assert server.has_event("protocol_error")  # the fuzz did reach the protocol checks
    assert counter["streams"] == EXAMPLES
