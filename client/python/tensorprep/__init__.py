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
from .ops import (add, affine, as_pipeline, brightness, cast, center_crop, channels_first, clamp,
                  color_jitter, contrast, crop, divide, flip, grayscale, hue, multiply, normalize,
                  pad, pipeline, random_affine, random_flip, random_resized_crop, random_rotate,
                  resize, rotate, saturation, subtract)
from .wire import AuxInput

__version__ = "0.1.0"

__all__ = [
    "AuxInput", "CancelledError", "Client", "DataLossError", "DeadlineExceededError",
    "FailedPreconditionError", "InternalError", "InvalidArgumentError", "MalformedResponseError",
    "ResourceExhaustedError", "Result", "TensorprepError",
    "UnavailableError", "add", "affine", "as_pipeline", "brightness", "cast", "center_crop",
    "channels_first", "clamp", "color_jitter", "contrast", "crop", "divide", "flip", "grayscale",
    "hue", "multiply", "normalize", "pad", "pipeline", "random_affine", "random_flip",
    "random_resized_crop", "random_rotate", "resize", "rotate", "saturation", "subtract",
    "timed_callback",
    "tune_malloc",
]
