"""tensorprep: Python client for the tensorprep preprocessing service.

    import tensorprep as tp
    with tp.Client("127.0.0.1:50051") as client:
        rotated = client.process(images, [tp.rotate(30, border="edge")])

See Client (unary and streaming calls), the op builders (rotate, flip, random_flip, normalize,
cast, ...), tensorprep.metrics (client-side latency histogram), and the adapters in
tensorprep.adapters (tf.data and PyTorch).
"""

from .client import Client, Result
from .errors import (CancelledError, DataLossError, DeadlineExceededError, FailedPreconditionError,
                     InternalError, InvalidArgumentError, MalformedResponseError,
                     ResourceExhaustedError, TensorprepError, UnavailableError)
from .memory import tune_malloc
from .metrics import timed_callback
from .ops import (add, as_pipeline, cast, clamp, divide, flip, multiply, normalize, pipeline,
                  random_flip, random_rotate, rotate, subtract)
from .wire import AuxInput

__version__ = "0.1.0"

__all__ = [
    "AuxInput", "CancelledError", "Client", "DataLossError", "DeadlineExceededError",
    "FailedPreconditionError", "InternalError", "InvalidArgumentError", "MalformedResponseError",
    "ResourceExhaustedError", "Result", "TensorprepError",
    "UnavailableError", "add", "as_pipeline", "cast", "clamp", "divide", "flip", "multiply",
    "normalize", "pipeline", "random_flip", "random_rotate", "rotate", "subtract", "timed_callback",
    "tune_malloc",
]
