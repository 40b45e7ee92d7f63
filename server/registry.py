"""Who takes part in the job: names and ids, the session of each client, and what it is doing.

The registry is the job's view of its clients; a session's own state machine is the protocol's
view of one stream. Availability for work is decided here, in the same critical section as the
event that changes it (an update folded, a refusal, a Ready), so the coordinator never sees a
round complete while its last uploader still looks busy.

Not thread-safe by itself: every method is called with the job's condition held (see
``server/job_state.py``), except ``check_hello``, which reads no shared state.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from fedsilo.common.bundles import ServerBundle
from fedsilo.common.errors import ProtocolError
from fedsilo.common.names import CLIENT_NAME_RULE, is_client_name
from fedsilo.common.proto import federation_pb2 as pb
from fedsilo.common.wire import PROTOCOL_VERSION
from fedsilo.server.run_files import ClientIdLog


class Stage(Enum):
    """What a client is doing, as far as the job is concerned."""

    JOINED = "joined"  # admitted; loading its task and data
    IDLE = "idle"  # ready for work
    DOWNLOAD = "download"  # a model is being sent to it
    TRAINING = "training"
    UPLOAD = "upload"
    QUEUED = "queued"  # its upload waits, unread, for its turn to be folded
    SECAGG_WAIT = "secagg_wait"  # its masked update is in; the other uploads are not yet
    SECAGG_UNMASK = "secagg_unmask"  # it owes the shares the unmask stage asked for
    EVALUATING = "evaluating"
    DISCARDING = "discarding"  # the server swallows the rest of a stream it refused


class WorkKind(Enum):
    """Work the coordinator gives a client."""

    TRAIN = "train"
    EVALUATE = "evaluate"


@dataclass(frozen=True)
class Work:
    """One piece of work: train in round ``round``, or evaluate the model of round ``round``."""

    kind: WorkKind
    round: int


class ProgressClock(Protocol):
    """When a session's stream last moved."""

    def idle_seconds(self, uploading: bool) -> float:
        """Seconds since the last progress (of tensor bytes, while ``uploading``)."""


class SessionHandle(Protocol):
    """What the job keeps of a session; it calls these with the job's condition released."""

    @property
    def progress(self) -> ProgressClock:
        """The stream's progress clock."""

    def offer(self, event: Any, payload: Any) -> bool:
        """Give the session work (a job-side event); False if it cannot take it now."""

    def send(self, item: Any) -> None:
        """Queue a message on the stream."""

    def close(self) -> None:
        """End the stream after what is queued."""

    def cut_off(self) -> None:
        """Cancel the stream now."""

    def wait_ended(self, timeout: float) -> bool:
        """Wait until the stream's writer has sent everything and ended; return whether it did."""


@dataclass
class Member:
    """A connected client."""

    client_id: int
    name: str
    session: SessionHandle
    stage: Stage = Stage.JOINED
    work: Work | None = None
    declared_examples: int = 0  # its Ready's train_examples
    takes_acks: bool = False  # its Hello said it takes upload_ack messages
    since: float = field(default_factory=time.monotonic)  # when the stage last changed

    def move(self, stage: Stage) -> None:
        """Enter ``stage``."""
        self.stage = stage
        self.since = time.monotonic()


class ClientRegistry:
    """Names, ids and the connected members of one job."""

    def __init__(
        self,
        job_id: int,
        id_log: ClientIdLog,
        admitted: Callable[[], ServerBundle] | None = None,
    ) -> None:
        self._job_id = job_id
        self._id_log = id_log
        self._admitted = admitted  # with mutual TLS: reads clients.json (names, caps) afresh
        self._ids: dict[str, int] = {}
        self._members: dict[int, Member] = {}

    def restore_ids(self) -> None:
        """Take the ids of an earlier run in this folder (resume)."""
        self._ids = self._id_log.load()

    def reset_ids(self) -> None:
        """Forget the ids of an earlier run in this folder (a fresh job)."""
        self._id_log.reset()
        self._ids = {}

    @property
    def ids(self) -> dict[str, int]:
        """A copy of the name -> id map."""
        return dict(self._ids)

    # ------------------------------------------------------------------ admission

    def check_hello(self, hello: pb.Hello, certificate_name: str | None) -> None:
        """Raise ProtocolError unless this Hello may join (version, job, name, certificate)."""
        if hello.protocol_version != PROTOCOL_VERSION:
            raise ProtocolError(
                int(pb.PROTOCOL_VERSION_MISMATCH),
                f"client speaks protocol {hello.protocol_version}, server {PROTOCOL_VERSION}",
            )
        if hello.HasField("job_id") and hello.job_id != self._job_id:
            raise ProtocolError(
                int(pb.WRONG_JOB), f"this server runs job {self._job_id}, not job {hello.job_id}"
            )
        if not is_client_name(hello.client_name):
            raise ProtocolError(
                int(pb.MALFORMED_MESSAGE), f"client name must be {CLIENT_NAME_RULE}"
            )
        self._check_certificate(certificate_name, hello.client_name)

    def _check_certificate(self, certificate_name: str | None, client_name: str) -> None:
        """With mutual TLS: the certificate must be admitted and the name must be its own."""
        if self._admitted is None:
            return
        if certificate_name is None:
            raise ProtocolError(int(pb.NOT_ADMITTED), "no client certificate")
        if certificate_name not in self._admitted().allowed_clients:
            raise ProtocolError(
                int(pb.NOT_ADMITTED),
                f"certificate {certificate_name!r} is not admitted to job {self._job_id}",
            )
        if client_name != certificate_name:
            raise ProtocolError(
                int(pb.NOT_ADMITTED),
                f"certificate {certificate_name!r} may not use the client name {client_name!r}",
            )

    def examples_cap(self, name: str, job_cap: int) -> int:
        """The most training examples ``name`` may claim: the job's cap, or its own if lower."""
        if self._admitted is None:
            return job_cap
        return min(job_cap, self._admitted().max_examples.get(name, job_cap))

    def admit(self, name: str, session: SessionHandle) -> tuple[Member, Member | None]:
        """Give ``name`` its id (durably, if new) and ``session``; return it and whom it replaced.

        The newest connection of a name wins: a client that reconnects after a network failure
        must not wait until the server notices that its old stream died.
        """
        client_id = self._ids.get(name)
        if client_id is None:
            client_id = len(self._ids)
            self._id_log.record(name, client_id)
            self._ids[name] = client_id
        replaced = self._members.get(client_id)
        member = Member(client_id, name, session)
        self._members[client_id] = member
        return member, replaced

    # ------------------------------------------------------------------ lookups

    def current(self, client_id: int | None, session: SessionHandle) -> Member | None:
        """Return the member ``client_id`` if ``session`` is still its session (not replaced)."""
        member = self._members.get(client_id) if client_id is not None else None
        return member if member is not None and member.session is session else None

    def get(self, client_id: int) -> Member | None:
        """Return the connected member with this id, if any."""
        return self._members.get(client_id)

    def available(self) -> list[int]:
        """Return, sorted, the ids of members ready for work and doing none."""
        return sorted(
            cid
            for cid, member in self._members.items()
            if member.stage is Stage.IDLE and member.work is None
        )

    def stages(self, client_ids: Iterable[int]) -> dict[int, str]:
        """Return what each of these clients is doing ("gone" if it left)."""
        return {
            cid: member.stage.value if (member := self._members.get(cid)) else "gone"
            for cid in client_ids
        }

    def members(self) -> list[Member]:
        """Return every connected member, by id."""
        return [self._members[cid] for cid in sorted(self._members)]

    # ------------------------------------------------------------------ changes

    def remove(self, client_id: int | None, session: SessionHandle) -> Member | None:
        """Forget a session whose stream ended; return its member if it was the current one."""
        member = self.current(client_id, session)
        if member is not None:
            del self._members[member.client_id]
        return member

    def assign(self, client_id: int, work: Work) -> Member:
        """Give an available member work; its model download starts."""
        member = self._members[client_id]
        member.work = work
        member.move(Stage.DOWNLOAD)
        return member

    def release(self, member: Member, stage: Stage = Stage.IDLE) -> None:
        """End the member's work (done, refused or dropped) and move it to ``stage``."""
        member.work = None
        member.move(stage)
