"""Coverage-guided fuzzing of the response decoder (tensorprep.wire.decode_response) with atheris.

Each input is decoded and compared with protobuf's own parser (wire_reference.check): it must
decode to what protobuf parses or raise MalformedResponseError; anything else (IndexError, a
wrong value, an array past the data) is a crash that libFuzzer reports and saves.

    python tests/python/fuzz_wire.py CORPUS_DIR [libFuzzer flags, e.g. -max_total_time=600]

An empty CORPUS_DIR is seeded with a few well-formed responses. test_wire_fuzz.py runs this for a
bounded number of inputs as part of the test suite.
"""

import os
import sys

import atheris

with atheris.instrument_imports(include=["tensorprep.wire"]):
    from tensorprep import wire  # noqa: F401  (instrumented for coverage feedback)

import numpy as np  # noqa: E402

import wire_reference  # noqa: E402
from tensorprep._stubs import pb  # noqa: E402


def seeds():
    """A few well-formed responses: images with aux tensors, an error, timings and transfer."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (2, 3, 4, 3), dtype=np.uint8)
    mask = rng.random((2, 3, 4), dtype=np.float32)
    full = pb.ProcessResponse(
        request_id="7.0", device=pb.DEVICE_CPU,
        images=pb.Tensor(dtype=pb.DTYPE_UINT8, shape=img.shape, data=img.tobytes()),
        aux=[pb.AuxTensor(name="mask", interpolation=pb.INTERPOLATION_BILINEAR, fill=0.5,
                          tensor=pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=mask.shape,
                                           data=mask.tobytes())),
             pb.AuxTensor(name="labels", tensor=pb.Tensor(dtype=pb.DTYPE_INT32, shape=[2],
                                                          data=b"\1\0\0\0\2\0\0\0"))],
        timings=pb.ServerTimings(decode_ns=1, queue_ns=2, kernel_ns=300, encode_ns=4,
                                 total_ns=400),
        transfer=pb.Transfer(inline_bytes_in=72, inline_bytes_out=72))
    error = pb.ProcessResponse(request_id="x", error=pb.Error(code=3, message="bad pipeline"))
    shm = pb.ProcessResponse(images=pb.Tensor(dtype=pb.DTYPE_FLOAT16, shape=[1, 2],
                                              shm=pb.SharedMemoryRef(region="r", byte_size=4)))
    return [m.SerializeToString() for m in (full, error, shm)] + [b""]


def test_one_input(data):
    wire_reference.check(data)


def main(argv):
    corpus = next((a for a in argv[1:] if not a.startswith("-")), None)
    if corpus and os.path.isdir(corpus) and not os.listdir(corpus):
        for i, seed in enumerate(seeds()):
            with open(os.path.join(corpus, f"seed-{i}"), "wb") as f:
                f.write(seed)
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
