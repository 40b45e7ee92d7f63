from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ErrorCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_CODE_UNSPECIFIED: _ClassVar[ErrorCode]
    MALFORMED_MESSAGE: _ClassVar[ErrorCode]
    PROTOCOL_VERSION_MISMATCH: _ClassVar[ErrorCode]
    WRONG_JOB: _ClassVar[ErrorCode]
    UNKNOWN_CLIENT: _ClassVar[ErrorCode]
    ILLEGAL_MESSAGE: _ClassVar[ErrorCode]
    DUPLICATE_HELLO: _ClassVar[ErrorCode]
    WRONG_ROUND: _ClassVar[ErrorCode]
    BAD_TENSOR_STREAM: _ClassVar[ErrorCode]
    NAME_IN_USE: _ClassVar[ErrorCode]
    INTERNAL: _ClassVar[ErrorCode]
    NOT_ADMITTED: _ClassVar[ErrorCode]
    UNSUPPORTED_CONFIG: _ClassVar[ErrorCode]
    POLICY_MISMATCH: _ClassVar[ErrorCode]
    TASK_FAILED: _ClassVar[ErrorCode]
    SECAGG_REFUSED: _ClassVar[ErrorCode]
    PRIVACY_BUDGET_SPENT: _ClassVar[ErrorCode]
ERROR_CODE_UNSPECIFIED: ErrorCode
MALFORMED_MESSAGE: ErrorCode
PROTOCOL_VERSION_MISMATCH: ErrorCode
WRONG_JOB: ErrorCode
UNKNOWN_CLIENT: ErrorCode
ILLEGAL_MESSAGE: ErrorCode
DUPLICATE_HELLO: ErrorCode
WRONG_ROUND: ErrorCode
BAD_TENSOR_STREAM: ErrorCode
NAME_IN_USE: ErrorCode
INTERNAL: ErrorCode
NOT_ADMITTED: ErrorCode
UNSUPPORTED_CONFIG: ErrorCode
POLICY_MISMATCH: ErrorCode
TASK_FAILED: ErrorCode
SECAGG_REFUSED: ErrorCode
PRIVACY_BUDGET_SPENT: ErrorCode

class ClientMessage(_message.Message):
    __slots__ = ("hello", "ready", "send_model", "chunk", "trailer", "eval_result", "heartbeat", "error", "secagg_advert", "secagg_shares", "secagg_unmask")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    SEND_MODEL_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    TRAILER_FIELD_NUMBER: _ClassVar[int]
    EVAL_RESULT_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SECAGG_ADVERT_FIELD_NUMBER: _ClassVar[int]
    SECAGG_SHARES_FIELD_NUMBER: _ClassVar[int]
    SECAGG_UNMASK_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    ready: Ready
    send_model: SendModel
    chunk: TensorChunk
    trailer: TensorStreamTrailer
    eval_result: EvalResult
    heartbeat: Heartbeat
    error: Error
    secagg_advert: SecAggKeyAdvert
    secagg_shares: SecAggKeyShares
    secagg_unmask: SecAggUnmaskResponse
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., ready: _Optional[_Union[Ready, _Mapping]] = ..., send_model: _Optional[_Union[SendModel, _Mapping]] = ..., chunk: _Optional[_Union[TensorChunk, _Mapping]] = ..., trailer: _Optional[_Union[TensorStreamTrailer, _Mapping]] = ..., eval_result: _Optional[_Union[EvalResult, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., secagg_advert: _Optional[_Union[SecAggKeyAdvert, _Mapping]] = ..., secagg_shares: _Optional[_Union[SecAggKeyShares, _Mapping]] = ..., secagg_unmask: _Optional[_Union[SecAggUnmaskResponse, _Mapping]] = ...) -> None: ...

class ServerMessage(_message.Message):
    __slots__ = ("init_config", "sync_model", "chunk", "trailer", "evaluate", "finish", "abort", "heartbeat", "error", "secagg_roster", "secagg_routed", "secagg_unmask_request", "upload_ack")
    INIT_CONFIG_FIELD_NUMBER: _ClassVar[int]
    SYNC_MODEL_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    TRAILER_FIELD_NUMBER: _ClassVar[int]
    EVALUATE_FIELD_NUMBER: _ClassVar[int]
    FINISH_FIELD_NUMBER: _ClassVar[int]
    ABORT_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SECAGG_ROSTER_FIELD_NUMBER: _ClassVar[int]
    SECAGG_ROUTED_FIELD_NUMBER: _ClassVar[int]
    SECAGG_UNMASK_REQUEST_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_ACK_FIELD_NUMBER: _ClassVar[int]
    init_config: InitConfig
    sync_model: SyncModel
    chunk: TensorChunk
    trailer: TensorStreamTrailer
    evaluate: Evaluate
    finish: Finish
    abort: Abort
    heartbeat: Heartbeat
    error: Error
    secagg_roster: SecAggKeyRoster
    secagg_routed: SecAggRoutedShares
    secagg_unmask_request: SecAggUnmaskRequest
    upload_ack: StreamPosition
    def __init__(self, init_config: _Optional[_Union[InitConfig, _Mapping]] = ..., sync_model: _Optional[_Union[SyncModel, _Mapping]] = ..., chunk: _Optional[_Union[TensorChunk, _Mapping]] = ..., trailer: _Optional[_Union[TensorStreamTrailer, _Mapping]] = ..., evaluate: _Optional[_Union[Evaluate, _Mapping]] = ..., finish: _Optional[_Union[Finish, _Mapping]] = ..., abort: _Optional[_Union[Abort, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., secagg_roster: _Optional[_Union[SecAggKeyRoster, _Mapping]] = ..., secagg_routed: _Optional[_Union[SecAggRoutedShares, _Mapping]] = ..., secagg_unmask_request: _Optional[_Union[SecAggUnmaskRequest, _Mapping]] = ..., upload_ack: _Optional[_Union[StreamPosition, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("protocol_version", "job_id", "client_name", "resume_upload", "resume_download", "takes_upload_acks")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_NAME_FIELD_NUMBER: _ClassVar[int]
    RESUME_UPLOAD_FIELD_NUMBER: _ClassVar[int]
    RESUME_DOWNLOAD_FIELD_NUMBER: _ClassVar[int]
    TAKES_UPLOAD_ACKS_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    job_id: int
    client_name: str
    resume_upload: StreamPosition
    resume_download: StreamPosition
    takes_upload_acks: bool
    def __init__(self, protocol_version: _Optional[int] = ..., job_id: _Optional[int] = ..., client_name: _Optional[str] = ..., resume_upload: _Optional[_Union[StreamPosition, _Mapping]] = ..., resume_download: _Optional[_Union[StreamPosition, _Mapping]] = ..., takes_upload_acks: _Optional[bool] = ...) -> None: ...

class InitConfig(_message.Message):
    __slots__ = ("client_id", "job", "resume_upload")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    RESUME_UPLOAD_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    job: JobConfig
    resume_upload: StreamPosition
    def __init__(self, client_id: _Optional[int] = ..., job: _Optional[_Union[JobConfig, _Mapping]] = ..., resume_upload: _Optional[_Union[StreamPosition, _Mapping]] = ...) -> None: ...

class StreamPosition(_message.Message):
    __slots__ = ("round", "offset")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    round: int
    offset: int
    def __init__(self, round: _Optional[int] = ..., offset: _Optional[int] = ...) -> None: ...

class JobConfig(_message.Message):
    __slots__ = ("job_id", "task", "seed", "rounds", "chunk_size", "heartbeat_seconds", "progress_timeout_seconds", "compression", "task_options_json", "task_hash", "train", "require_dp", "control_variates", "secure_aggregation")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    TASK_OPTIONS_JSON_FIELD_NUMBER: _ClassVar[int]
    TASK_HASH_FIELD_NUMBER: _ClassVar[int]
    TRAIN_FIELD_NUMBER: _ClassVar[int]
    REQUIRE_DP_FIELD_NUMBER: _ClassVar[int]
    CONTROL_VARIATES_FIELD_NUMBER: _ClassVar[int]
    SECURE_AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    job_id: int
    task: str
    seed: int
    rounds: int
    chunk_size: int
    heartbeat_seconds: float
    progress_timeout_seconds: float
    compression: Compression
    task_options_json: str
    task_hash: str
    train: TrainConfig
    require_dp: bool
    control_variates: bool
    secure_aggregation: SecAggSettings
    def __init__(self, job_id: _Optional[int] = ..., task: _Optional[str] = ..., seed: _Optional[int] = ..., rounds: _Optional[int] = ..., chunk_size: _Optional[int] = ..., heartbeat_seconds: _Optional[float] = ..., progress_timeout_seconds: _Optional[float] = ..., compression: _Optional[_Union[Compression, _Mapping]] = ..., task_options_json: _Optional[str] = ..., task_hash: _Optional[str] = ..., train: _Optional[_Union[TrainConfig, _Mapping]] = ..., require_dp: _Optional[bool] = ..., control_variates: _Optional[bool] = ..., secure_aggregation: _Optional[_Union[SecAggSettings, _Mapping]] = ...) -> None: ...

class SecAggSettings(_message.Message):
    __slots__ = ("clip_norm", "max_weight", "element_bound", "corrupt_fraction", "dropout_fraction", "security_bits", "correctness_bits", "allow_unsigned", "noise_std")
    CLIP_NORM_FIELD_NUMBER: _ClassVar[int]
    MAX_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    ELEMENT_BOUND_FIELD_NUMBER: _ClassVar[int]
    CORRUPT_FRACTION_FIELD_NUMBER: _ClassVar[int]
    DROPOUT_FRACTION_FIELD_NUMBER: _ClassVar[int]
    SECURITY_BITS_FIELD_NUMBER: _ClassVar[int]
    CORRECTNESS_BITS_FIELD_NUMBER: _ClassVar[int]
    ALLOW_UNSIGNED_FIELD_NUMBER: _ClassVar[int]
    NOISE_STD_FIELD_NUMBER: _ClassVar[int]
    clip_norm: float
    max_weight: int
    element_bound: float
    corrupt_fraction: float
    dropout_fraction: float
    security_bits: int
    correctness_bits: int
    allow_unsigned: bool
    noise_std: float
    def __init__(self, clip_norm: _Optional[float] = ..., max_weight: _Optional[int] = ..., element_bound: _Optional[float] = ..., corrupt_fraction: _Optional[float] = ..., dropout_fraction: _Optional[float] = ..., security_bits: _Optional[int] = ..., correctness_bits: _Optional[int] = ..., allow_unsigned: _Optional[bool] = ..., noise_std: _Optional[float] = ...) -> None: ...

class SecAggSetup(_message.Message):
    __slots__ = ("round", "attempt", "participants", "length")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    round: int
    attempt: bytes
    participants: _containers.RepeatedScalarFieldContainer[int]
    length: int
    def __init__(self, round: _Optional[int] = ..., attempt: _Optional[bytes] = ..., participants: _Optional[_Iterable[int]] = ..., length: _Optional[int] = ...) -> None: ...

class SecAggKeyAdvert(_message.Message):
    __slots__ = ("client_id", "name", "cipher_key", "mask_key", "self_mask_commitment", "round_digest", "certificate", "signature")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CIPHER_KEY_FIELD_NUMBER: _ClassVar[int]
    MASK_KEY_FIELD_NUMBER: _ClassVar[int]
    SELF_MASK_COMMITMENT_FIELD_NUMBER: _ClassVar[int]
    ROUND_DIGEST_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    name: str
    cipher_key: bytes
    mask_key: bytes
    self_mask_commitment: bytes
    round_digest: bytes
    certificate: bytes
    signature: bytes
    def __init__(self, client_id: _Optional[int] = ..., name: _Optional[str] = ..., cipher_key: _Optional[bytes] = ..., mask_key: _Optional[bytes] = ..., self_mask_commitment: _Optional[bytes] = ..., round_digest: _Optional[bytes] = ..., certificate: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class SecAggKeyRoster(_message.Message):
    __slots__ = ("clients", "adverts")
    CLIENTS_FIELD_NUMBER: _ClassVar[int]
    ADVERTS_FIELD_NUMBER: _ClassVar[int]
    clients: _containers.RepeatedScalarFieldContainer[int]
    adverts: _containers.RepeatedCompositeFieldContainer[SecAggKeyAdvert]
    def __init__(self, clients: _Optional[_Iterable[int]] = ..., adverts: _Optional[_Iterable[_Union[SecAggKeyAdvert, _Mapping]]] = ...) -> None: ...

class SecAggEncryptedShare(_message.Message):
    __slots__ = ("sender", "recipient", "nonce", "ciphertext")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    sender: int
    recipient: int
    nonce: bytes
    ciphertext: bytes
    def __init__(self, sender: _Optional[int] = ..., recipient: _Optional[int] = ..., nonce: _Optional[bytes] = ..., ciphertext: _Optional[bytes] = ...) -> None: ...

class SecAggKeyShares(_message.Message):
    __slots__ = ("sender", "shares")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    sender: int
    shares: _containers.RepeatedCompositeFieldContainer[SecAggEncryptedShare]
    def __init__(self, sender: _Optional[int] = ..., shares: _Optional[_Iterable[_Union[SecAggEncryptedShare, _Mapping]]] = ...) -> None: ...

class SecAggRoutedShares(_message.Message):
    __slots__ = ("recipient", "shares")
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    recipient: int
    shares: _containers.RepeatedCompositeFieldContainer[SecAggEncryptedShare]
    def __init__(self, recipient: _Optional[int] = ..., shares: _Optional[_Iterable[_Union[SecAggEncryptedShare, _Mapping]]] = ...) -> None: ...

class SecAggUnmaskRequest(_message.Message):
    __slots__ = ("self_mask_of", "mask_key_of")
    SELF_MASK_OF_FIELD_NUMBER: _ClassVar[int]
    MASK_KEY_OF_FIELD_NUMBER: _ClassVar[int]
    self_mask_of: _containers.RepeatedScalarFieldContainer[int]
    mask_key_of: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, self_mask_of: _Optional[_Iterable[int]] = ..., mask_key_of: _Optional[_Iterable[int]] = ...) -> None: ...

class SecAggUnmaskResponse(_message.Message):
    __slots__ = ("sender", "self_mask_shares", "mask_key_shares")
    class SelfMaskSharesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: bytes
        def __init__(self, key: _Optional[int] = ..., value: _Optional[bytes] = ...) -> None: ...
    class MaskKeySharesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: bytes
        def __init__(self, key: _Optional[int] = ..., value: _Optional[bytes] = ...) -> None: ...
    SENDER_FIELD_NUMBER: _ClassVar[int]
    SELF_MASK_SHARES_FIELD_NUMBER: _ClassVar[int]
    MASK_KEY_SHARES_FIELD_NUMBER: _ClassVar[int]
    sender: int
    self_mask_shares: _containers.ScalarMap[int, bytes]
    mask_key_shares: _containers.ScalarMap[int, bytes]
    def __init__(self, sender: _Optional[int] = ..., self_mask_shares: _Optional[_Mapping[int, bytes]] = ..., mask_key_shares: _Optional[_Mapping[int, bytes]] = ...) -> None: ...

class Compression(_message.Message):
    __slots__ = ("codec", "topk_fraction", "per_channel")
    CODEC_FIELD_NUMBER: _ClassVar[int]
    TOPK_FRACTION_FIELD_NUMBER: _ClassVar[int]
    PER_CHANNEL_FIELD_NUMBER: _ClassVar[int]
    codec: str
    topk_fraction: float
    per_channel: bool
    def __init__(self, codec: _Optional[str] = ..., topk_fraction: _Optional[float] = ..., per_channel: _Optional[bool] = ...) -> None: ...

class Ready(_message.Message):
    __slots__ = ("train_examples", "test_examples", "record_dp")
    TRAIN_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    TEST_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    RECORD_DP_FIELD_NUMBER: _ClassVar[int]
    train_examples: int
    test_examples: int
    record_dp: RecordDp
    def __init__(self, train_examples: _Optional[int] = ..., test_examples: _Optional[int] = ..., record_dp: _Optional[_Union[RecordDp, _Mapping]] = ...) -> None: ...

class RecordDp(_message.Message):
    __slots__ = ("target_epsilon", "delta", "noise_multiplier", "max_grad_norm", "epsilon_spent")
    TARGET_EPSILON_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    NOISE_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    MAX_GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    EPSILON_SPENT_FIELD_NUMBER: _ClassVar[int]
    target_epsilon: float
    delta: float
    noise_multiplier: float
    max_grad_norm: float
    epsilon_spent: float
    def __init__(self, target_epsilon: _Optional[float] = ..., delta: _Optional[float] = ..., noise_multiplier: _Optional[float] = ..., max_grad_norm: _Optional[float] = ..., epsilon_spent: _Optional[float] = ...) -> None: ...

class TrainConfig(_message.Message):
    __slots__ = ("local_epochs", "batch_size", "learning_rate", "seed", "proximal_mu", "optimizer", "momentum", "nesterov", "weight_decay")
    LOCAL_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    PROXIMAL_MU_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    MOMENTUM_FIELD_NUMBER: _ClassVar[int]
    NESTEROV_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    local_epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    proximal_mu: float
    optimizer: str
    momentum: float
    nesterov: bool
    weight_decay: float
    def __init__(self, local_epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., learning_rate: _Optional[float] = ..., seed: _Optional[int] = ..., proximal_mu: _Optional[float] = ..., optimizer: _Optional[str] = ..., momentum: _Optional[float] = ..., nesterov: _Optional[bool] = ..., weight_decay: _Optional[float] = ...) -> None: ...

class SyncModel(_message.Message):
    __slots__ = ("round", "train", "model", "secagg", "resume_offset")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    TRAIN_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SECAGG_FIELD_NUMBER: _ClassVar[int]
    RESUME_OFFSET_FIELD_NUMBER: _ClassVar[int]
    round: int
    train: TrainConfig
    model: TensorStreamHeader
    secagg: SecAggSetup
    resume_offset: int
    def __init__(self, round: _Optional[int] = ..., train: _Optional[_Union[TrainConfig, _Mapping]] = ..., model: _Optional[_Union[TensorStreamHeader, _Mapping]] = ..., secagg: _Optional[_Union[SecAggSetup, _Mapping]] = ..., resume_offset: _Optional[int] = ...) -> None: ...

class SendModel(_message.Message):
    __slots__ = ("round", "train_examples", "metrics", "update", "resume_offset")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    TRAIN_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    UPDATE_FIELD_NUMBER: _ClassVar[int]
    RESUME_OFFSET_FIELD_NUMBER: _ClassVar[int]
    round: int
    train_examples: int
    metrics: LocalMetrics
    update: TensorStreamHeader
    resume_offset: int
    def __init__(self, round: _Optional[int] = ..., train_examples: _Optional[int] = ..., metrics: _Optional[_Union[LocalMetrics, _Mapping]] = ..., update: _Optional[_Union[TensorStreamHeader, _Mapping]] = ..., resume_offset: _Optional[int] = ...) -> None: ...

class Evaluate(_message.Message):
    __slots__ = ("round", "model")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    round: int
    model: TensorStreamHeader
    def __init__(self, round: _Optional[int] = ..., model: _Optional[_Union[TensorStreamHeader, _Mapping]] = ...) -> None: ...

class EvalResult(_message.Message):
    __slots__ = ("round", "evaluation")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    round: int
    evaluation: Evaluation
    def __init__(self, round: _Optional[int] = ..., evaluation: _Optional[_Union[Evaluation, _Mapping]] = ...) -> None: ...

class LocalMetrics(_message.Message):
    __slots__ = ("train_loss", "train_seconds", "evaluation", "dp_epsilon", "local_steps")
    TRAIN_LOSS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    DP_EPSILON_FIELD_NUMBER: _ClassVar[int]
    LOCAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    train_loss: float
    train_seconds: float
    evaluation: Evaluation
    dp_epsilon: float
    local_steps: int
    def __init__(self, train_loss: _Optional[float] = ..., train_seconds: _Optional[float] = ..., evaluation: _Optional[_Union[Evaluation, _Mapping]] = ..., dp_epsilon: _Optional[float] = ..., local_steps: _Optional[int] = ...) -> None: ...

class Evaluation(_message.Message):
    __slots__ = ("examples", "loss", "accuracy", "metrics")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    examples: int
    loss: float
    accuracy: float
    metrics: _containers.ScalarMap[str, float]
    def __init__(self, examples: _Optional[int] = ..., loss: _Optional[float] = ..., accuracy: _Optional[float] = ..., metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...

class Finish(_message.Message):
    __slots__ = ("rounds_completed",)
    ROUNDS_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    rounds_completed: int
    def __init__(self, rounds_completed: _Optional[int] = ...) -> None: ...

class Abort(_message.Message):
    __slots__ = ("reason", "retry")
    REASON_FIELD_NUMBER: _ClassVar[int]
    RETRY_FIELD_NUMBER: _ClassVar[int]
    reason: str
    retry: bool
    def __init__(self, reason: _Optional[str] = ..., retry: _Optional[bool] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TensorSpec(_message.Message):
    __slots__ = ("name", "dtype", "shape", "nbytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    NBYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    nbytes: int
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., nbytes: _Optional[int] = ...) -> None: ...

class TensorStreamHeader(_message.Message):
    __slots__ = ("tensors", "total_bytes", "inline")
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    INLINE_FIELD_NUMBER: _ClassVar[int]
    tensors: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    total_bytes: int
    inline: InlineTensors
    def __init__(self, tensors: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., total_bytes: _Optional[int] = ..., inline: _Optional[_Union[InlineTensors, _Mapping]] = ...) -> None: ...

class InlineTensors(_message.Message):
    __slots__ = ("data", "checksum")
    DATA_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    checksum: int
    def __init__(self, data: _Optional[bytes] = ..., checksum: _Optional[int] = ...) -> None: ...

class TensorChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class TensorStreamTrailer(_message.Message):
    __slots__ = ("checksum",)
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    checksum: int
    def __init__(self, checksum: _Optional[int] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: ErrorCode
    message: str
    def __init__(self, code: _Optional[_Union[ErrorCode, str]] = ..., message: _Optional[str] = ...) -> None: ...
