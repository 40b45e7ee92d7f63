"""A job with update compression: uploads are checked against the codec's wire specs before a
byte is used, hostile compressed content is refused, and a valid one is folded."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import structlog
import torch

from fedsilo.common.compression import Compression, encode
from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.wire import PROTOCOL_VERSION, Inbound, serialize
from fedsilo.server.app import make_job
from fedsilo.server.config import ServerConfig
from fedsilo.server.job import Job, JobOutcome
from fedsilo.server.session import CLOSE, ClientSession, OutgoingModel
from tests.wire_helpers import decode_state, encode_state

TIMEOUT = 30.0
State = dict[str, torch.Tensor]


class Driver:
    """One hand-driven session of an in-process job whose coordinator runs in a thread."""

    def __init__(self, tmp_path: Path, setting: Compression) -> None:
        config = ServerConfig(
            job_id=0,
            insecure=True,
            rounds=1,
            min_clients=1,
            task_options={"max_samples": 40},
            out=tmp_path / "run",
            compression=setting.codec,  # type: ignore[arg-type]
            topk_fraction=setting.topk_fraction,
            per_channel=setting.per_channel,
            round_timeout=TIMEOUT,
            join_timeout=TIMEOUT,
            progress_timeout=TIMEOUT,
        )
        self.setting = setting
        self.job: Job = make_job(config, structlog.get_logger(), checkpoint=None)
        self.session: ClientSession = self.job.open_session("test", lambda: None, None)
        self.outcome: list[JobOutcome] = []
        self.thread = threading.Thread(target=lambda: self.outcome.append(self.job.run()))
        self.thread.start()

    def send(self, *messages: pb.ClientMessage) -> None:
        for message in messages:
            raw = serialize(message)
            self.session.handle(Inbound(pb.ClientMessage.FromString(raw), len(raw)))

    def recv(self) -> list[pb.ServerMessage]:
        item = self.session.outbox.get(timeout=TIMEOUT)
        assert item is not CLOSE, "the session was closed"
        items = list(item) if isinstance(item, OutgoingModel) else [item]
        return [pb.ServerMessage.FromString(serialize(frame)) for frame in items]  # type: ignore[arg-type]

    def join(self) -> JobOutcome:
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive() and self.outcome
        return self.outcome[0]

    def start_round(self) -> State:
        """Join, get ready, and receive round 1's global model."""
        self.send(
            pb.ClientMessage(hello=pb.Hello(protocol_version=PROTOCOL_VERSION, client_name="org-a"))
        )
        (init,) = self.recv()
        assert Compression.from_proto(init.init_config.job.compression) == self.setting
        self.send(pb.ClientMessage(ready=pb.Ready(train_examples=10)))
        head, *rest = self.recv()
        header = head.sync_model.model
        if header.HasField("inline"):  # a model that fits in one chunk comes in one message
            return decode_state(header, [header.inline.data], header.inline.checksum)
        *chunks, trailer = rest
        return decode_state(header, [c.chunk.data for c in chunks], trailer.trailer.checksum)

    def upload_inline(self, wire: State) -> None:
        header, chunks, checksum = encode_state(wire)
        header.inline.CopyFrom(pb.InlineTensors(data=b"".join(chunks), checksum=checksum))
        self.send(
            pb.ClientMessage(send_model=pb.SendModel(round=1, train_examples=10, update=header))
        )

    def upload(self, wire: State) -> None:
        header, chunks, checksum = encode_state(wire)
        self.send(
            pb.ClientMessage(send_model=pb.SendModel(round=1, train_examples=10, update=header)),
            *(pb.ClientMessage(chunk=pb.TensorChunk(data=chunk)) for chunk in chunks),
            pb.ClientMessage(trailer=pb.TensorStreamTrailer(checksum=checksum)),
        )


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[Callable[[Compression], Driver]]:
    made: list[Driver] = []

    def make(setting: Compression) -> Driver:
        made.append(Driver(tmp_path, setting))
        return made[-1]

    yield make
    for each in made:
        each.job.request_stop("test over")
        each.thread.join(TIMEOUT)


def trained(state: State) -> State:
    return {k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}


def expect_refused(run: Driver, words: str) -> None:
    (reply,) = run.recv()
    assert reply.WhichOneof("body") == "error", reply
    assert reply.error.code == pb.BAD_TENSOR_STREAM
    assert words in reply.error.message, reply.error.message
    outcome = run.join()
    assert not outcome.finished and "0 of 1" in outcome.reason


def test_full_weights_under_int8_are_refused_at_the_header(driver) -> None:
    run = driver(Compression("int8"))
    global_state = run.start_round()
    run.upload(trained(global_state))  # what a client that ignored the codec would send
    expect_refused(run, "header")


def int8_nan_scale(wire: State) -> None:
    next(v for k, v in wire.items() if k.endswith("#scale")).fill_(math.nan)


def int8_huge_scale(wire: State) -> None:
    next(v for k, v in wire.items() if k.endswith("#scale")).fill_(3e38)


def topk_index_past_end(wire: State) -> None:
    next(v for k, v in wire.items() if k.endswith("#idx"))[-1] = 1 << 30


def topk_index_repeated(wire: State) -> None:
    index = next(v for k, v in wire.items() if k.endswith("#idx"))
    index[1] = index[0]


@pytest.mark.parametrize(
    ("setting", "spoil", "words"),
    [
        (Compression("int8"), int8_nan_scale, "scale"),
        (Compression("int8"), int8_huge_scale, "NaN or infinite"),
        (Compression("topk", 0.5), topk_index_past_end, "top-k indices"),
        (Compression("topk", 0.5), topk_index_repeated, "top-k indices"),
    ],
    ids=["nan-scale", "overflowing-scale", "index-past-end", "index-repeated"],
)
def test_hostile_compressed_content_is_refused(driver, setting, spoil, words) -> None:
    run = driver(setting)
    global_state = run.start_round()
    wire = encode(trained(global_state), global_state, setting)
    spoil(wire)
    run.upload(wire)
    expect_refused(run, words)


def test_a_valid_int8_update_is_folded_and_counted_in_compressed_bytes(driver) -> None:
    setting = Compression("int8", per_channel=True)
    run = driver(setting)
    global_state = run.start_round()
    update = trained(global_state)
    wire = encode(update, global_state, setting)
    run.upload(wire)
    head, *_ = run.recv()  # the final model comes to be evaluated
    assert head.WhichOneof("body") == "evaluate"
    for name, tensor in run.job.global_state.items():
        assert torch.allclose(tensor, update[name], atol=1e-4), name
    run.send(pb.ClientMessage(eval_result=pb.EvalResult(round=1)))
    assert run.join().finished
    full_bytes = sum(t.nbytes for t in global_state.values())
    wire_bytes = sum(t.nbytes for t in wire.values())
    lines = run.job.metrics_log.path.read_text().splitlines()
    row = next(r for r in map(json.loads, lines) if r["round"] == 1)
    assert wire_bytes <= row["bytes_up"] < full_bytes


def test_a_header_of_the_right_size_with_other_tensors_is_refused(driver) -> None:
    run = driver(Compression("delta"))
    global_state = run.start_round()
    run.upload(trained(global_state))  # the same bytes as the deltas, under the model's names
    expect_refused(run, "does not match")


@pytest.mark.parametrize("broken", [False, True])
def test_an_update_inline_in_its_send_model_is_folded_or_refused_like_a_stream(
    driver, broken: bool
) -> None:
    run = driver(Compression("none"))
    update = trained(run.start_round())
    if broken:  # NaN: refused after the checksum, as a streamed one would be
        next(t for t in update.values() if t.is_floating_point()).view(-1)[0] = math.nan
    run.upload_inline(update)
    if broken:
        expect_refused(run, "NaN")
        return
    head, *_ = run.recv()
    assert head.WhichOneof("body") == "evaluate"
    for name, tensor in run.job.global_state.items():
        # One client: the mean is its update (x10 / 10, up to rounding).
        torch.testing.assert_close(tensor, update[name], rtol=1e-6, atol=0, msg=name)
