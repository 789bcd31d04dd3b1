"""Python exceptions for the service's gRPC status codes.

Every failed call raises a subclass of TensorprepError carrying the server's status code
(``.code``, a grpc.StatusCode) and message (``.details``). Catch the subclass for one code, or
TensorprepError for all of them.
"""

import grpc


class TensorprepError(Exception):
    """A call failed. ``code`` is the grpc.StatusCode, ``details`` the server's message."""

    def __init__(self, code, details, request_id=None):
        self.code = code
        self.details = details
        self.request_id = request_id
        where = f" (request {request_id})" if request_id else ""
        super().__init__(f"{code.name}: {details}{where}")


class InvalidArgumentError(TensorprepError):
    """The request was malformed: the message names the field, what was expected and what came."""


class FailedPreconditionError(TensorprepError):
    """A valid request the server cannot run in its state (e.g. device="cuda" without a GPU)."""


class ResourceExhaustedError(TensorprepError):
    """Over a size or in-flight budget; retry later or send smaller batches."""


class UnavailableError(TensorprepError):
    """The server is not reachable or is shutting down; a retry may succeed."""


class DeadlineExceededError(TensorprepError):
    """The call's deadline passed before the response came."""


class CancelledError(TensorprepError):
    """The call was cancelled."""


class InternalError(TensorprepError):
    """The server broke an invariant; report it."""


class DataLossError(TensorprepError):
    """Data went missing on the way: a stream that ended early, a response cut short or garbled."""


class MalformedResponseError(DataLossError, ValueError):
    """The client could not decode a response (tensorprep.wire): truncated or garbled bytes, a
    length past the end of the data, a tensor whose bytes do not match its dtype and shape. The
    message says what was wrong and at which byte. Also a ValueError, which the decoder raised for
    some of these before it had its own class."""

    def __init__(self, details):
        super().__init__(grpc.StatusCode.DATA_LOSS, details)


_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.CANCELLED: CancelledError,
    grpc.StatusCode.INTERNAL: InternalError,
    grpc.StatusCode.DATA_LOSS: DataLossError,
}
_CODE_BY_VALUE = {c.value[0]: c for c in grpc.StatusCode}


def error_for(code, details, request_id=None):
    """Builds the TensorprepError subclass for ``code`` (a grpc.StatusCode or its int value)."""
    if not isinstance(code, grpc.StatusCode):
        code = _CODE_BY_VALUE.get(int(code), grpc.StatusCode.UNKNOWN)
    return _BY_CODE.get(code, TensorprepError)(code, details, request_id)


def from_rpc_error(err):
    """Converts a grpc.RpcError raised by a call into a TensorprepError."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else str(err)
    return error_for(code or grpc.StatusCode.UNKNOWN, details or "")
