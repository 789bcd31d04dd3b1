"""Bearer-token auth through the Python client against a real server started with a token."""

import numpy as np
import pytest

import tensorprep as tp


@pytest.fixture(scope="module")
def token_server(start_server, tmp_path_factory):
    token_file = tmp_path_factory.mktemp("auth") / "token"
    token_file.write_text("s3cret-token-for-tests\n")
    return start_server(auth_token_file=str(token_file))


def test_calls_with_the_token_succeed(token_server):
    images = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    with tp.Client(token_server.address, token="s3cret-token-for-tests", timeout=30) as c:
        out = c.process(images, [tp.flip("horizontal")])
        np.testing.assert_array_equal(out, images[:, :, ::-1])
        assert len(c.list_ops().ops) == len(tp.ops.OPS)
        streamed = list(c.stream([images, images + 1], [tp.add(1)], inflight=2))
        np.testing.assert_array_equal(streamed[1], images + 2)


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_calls_without_the_right_token_are_unauthenticated(token_server, token):
    images = np.zeros((1, 2, 2), dtype=np.uint8)
    with tp.Client(token_server.address, token=token, timeout=30) as c:
        with pytest.raises(tp.TensorprepError) as err:
            c.process(images, [tp.flip("vertical")])
        assert err.value.code.name == "UNAUTHENTICATED"
        assert "s3cret" not in str(err.value)
