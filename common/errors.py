"""Every error fedsilo raises on purpose, in one hierarchy.

    FedsiloError                  base; the CLIs turn it into one line and an exit code
    ├── ConfigError               bad flag, env var or config file value (exit 2)
    ├── PortInUseError            the job's port is taken (exit 2)
    ├── TaskLoadError             --task names nothing loadable (exit 2)
    ├── PolicyError               a client refuses what the server asks of it (exit 2)
    ├── CodecError                a tensor stream that disagrees with its header or the model
    ├── ProtocolError             a message that is illegal now; carries the wire ErrorCode
    ├── ConnectError              no session with the server in the allowed time, or
    │                             a failure retrying cannot fix (foreign CA, TLS mismatch)
    ├── SessionLostError          a client's stream broke; it reconnects within its budget
    │   └── LeftRoundError        a client left a round it could not train; it rejoins
    ├── LocalTrainingError        the processes training a round failed (a rank died)
    ├── ServerRefusedError        the server answered a client with an Error message
    ├── TaskFailedError           a client's own task raised (load_data, train, evaluate)
    ├── StopRequestedError        SIGTERM/SIGINT asked a daemon to leave (exit 0)
    ├── JobAbortedError           the job ended without finishing its rounds
    └── SecAggError               a secure-aggregation round cannot complete (too few survivors)
        └── SecAggRefusedError    a secure-aggregation message refused (bad signature, a
                                  request for both shares of one peer, a tampered share)

Low-level exceptions (grpc, OSError, pydantic) are translated into these once, at the module
that meets them, with ``raise ... from exc``.
"""

from __future__ import annotations


class FedsiloError(Exception):
    """Base of every fedsilo error; ``exit_code`` is what a CLI exits with."""

    exit_code: int = 1


class ConfigError(FedsiloError):
    """A configuration value is missing or invalid."""

    exit_code = 2


class PortInUseError(FedsiloError):
    """The port a job needs is already bound by another process."""

    exit_code = 2


class TaskLoadError(FedsiloError):
    """A task name or ``package.module:Name`` could not be resolved."""

    exit_code = 2


class PolicyError(FedsiloError):
    """The server asked a client for a task or training settings its policy does not allow."""

    exit_code = 2


class CodecError(FedsiloError):
    """A tensor stream is malformed or does not match the model it is meant for."""


class ProtocolError(FedsiloError):
    """A peer sent a message that is not legal in the current state."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ConnectError(FedsiloError):
    """No session with the server: not within the allowed time, or never (a certain failure)."""


class JobAbortedError(FedsiloError):
    """The job stopped before completing its rounds."""


class SessionLostError(FedsiloError):
    """A client's stream broke (network, server restart, cut off); the client may reconnect."""


class LeftRoundError(SessionLostError):
    """A client told the server it cannot deliver this round and ends the session to rejoin."""


class LocalTrainingError(FedsiloError):
    """The processes that train a round locally failed (a rank died or raised)."""

    def __init__(self, message: str, round_number: int | None = None) -> None:
        super().__init__(message)
        self.round_number = round_number


class ServerRefusedError(FedsiloError):
    """The server answered a client with an Error message."""


class TaskFailedError(FedsiloError):
    """A client's own task raised while ``doing``; ``line`` (type: message) goes to the server.

    It exits 3 (neither a usage error nor the server's or the network's doing), or with the
    code of the fedsilo error the task raised (a ConfigError of the member's: 2).
    """

    exit_code = 3

    def __init__(self, doing: str, line: str, exit_code: int = 3) -> None:
        super().__init__(f"the task failed while {doing}: {line}")
        self.doing = doing
        self.line = line
        self.exit_code = exit_code

    def __reduce__(self) -> tuple[type[TaskFailedError], tuple[str, str, int]]:
        return (type(self), (self.doing, self.line, self.exit_code))  # not only its message


class StopRequestedError(FedsiloError):
    """A daemon was asked to stop by a signal."""

    exit_code = 0


class SecAggError(FedsiloError):
    """A secure-aggregation round cannot complete (too few clients left, a bad reconstruction)."""


class SecAggRefusedError(SecAggError):
    """A secure-aggregation message was refused: it breaks the protocol or fails a check."""
