"""A client that misbehaves on cue, for fault-injection tests (run as its own process).

It speaks the protocol by hand: Hello, Ready, and for each round it receives the model and
sends the same weights back. In round 1 it first waits for a line on stdin (so that the test
controls when round 1 can complete), sending heartbeats meanwhile as a training client would.
In the round given by --fault-round it stops at the phase given by --stop-at, prints
``stopped-at <phase>`` and blocks forever without reading or sending: the test then kills it
with SIGKILL, or leaves it stalled for the server's progress deadline.

    download  after the SyncModel header and one chunk (it stops reading the stream)
    training  after the whole model arrived (nothing is sent: no heartbeat, no update)
    upload    after SendModel and the first chunk of the update (no trailer follows)
"""

from __future__ import annotations

import argparse
import queue
import sys
import threading
from collections.abc import Iterator

import grpc

from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.wire import PROTOCOL_VERSION, SESSION_METHOD_PATH
from tests.wire_helpers import decode_state, encode_state

PHASES = ("download", "training", "upload")


def block_forever(phase: str) -> None:
    """Announce the phase and never return (the test kills this process)."""
    print(f"stopped-at {phase}", flush=True)
    threading.Event().wait()


def main() -> None:
    """Run the scripted client."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--fault-round", type=int, required=True)
    parser.add_argument("--stop-at", choices=PHASES, required=True)
    args = parser.parse_args()

    outbox: queue.SimpleQueue[pb.ClientMessage] = queue.SimpleQueue()

    def requests() -> Iterator[pb.ClientMessage]:
        while True:
            yield outbox.get()

    # A fixed 64 KiB stream window (no BDP probe, which grows it with its estimate): a client
    # that stops reading mid-download holds the server's writes after 64 KiB plus the socket
    # buffers, far less than the 16 MiB model, so the server sees the stall as a download.
    channel = grpc.insecure_channel(
        args.server,
        options=[("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1 << 16)],
    )
    stream = channel.stream_stream(
        SESSION_METHOD_PATH,
        request_serializer=pb.ClientMessage.SerializeToString,
        response_deserializer=pb.ServerMessage.FromString,
    )(requests())
    outbox.put(
        pb.ClientMessage(hello=pb.Hello(protocol_version=PROTOCOL_VERSION, client_name=args.name))
    )
    init = next(stream)
    assert init.HasField("init_config"), init
    outbox.put(pb.ClientMessage(ready=pb.Ready(train_examples=10, test_examples=0)))
    print("ready", flush=True)

    while True:
        head = next(stream)
        if head.HasField("finish"):
            return
        assert head.HasField("sync_model"), head
        number = head.sync_model.round
        faulty = number == args.fault_round
        header = head.sync_model.model
        assert not header.HasField("inline"), "the faulty client needs a model streamed in chunks"
        chunks = []
        while (message := next(stream)).HasField("chunk"):
            chunks.append(message.chunk.data)
            if faulty and args.stop_at == "download":
                block_forever("download")
        state = decode_state(header, chunks, message.trailer.checksum)
        if faulty and args.stop_at == "training":
            block_forever("training")
        if number == 1:
            # Like a real client training, show progress while the test holds round 1 open.
            released = threading.Event()

            def heartbeats(done: threading.Event = released) -> None:
                while not done.wait(0.5):
                    outbox.put(pb.ClientMessage(heartbeat=pb.Heartbeat()))

            threading.Thread(target=heartbeats, daemon=True).start()
            sys.stdin.readline()  # the test says when round 1 may complete
            released.set()
        header, update, checksum = encode_state(state, init.init_config.job.chunk_size)
        outbox.put(
            pb.ClientMessage(
                send_model=pb.SendModel(round=number, train_examples=10, update=header)
            )
        )
        for index, chunk in enumerate(update):
            outbox.put(pb.ClientMessage(chunk=pb.TensorChunk(data=chunk)))
            if faulty and args.stop_at == "upload" and index == 0:
                block_forever("upload")
        outbox.put(pb.ClientMessage(trailer=pb.TensorStreamTrailer(checksum=checksum)))


if __name__ == "__main__":
    main()
