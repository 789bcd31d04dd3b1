"""Independent references for the Python client tests: NumPy, scikit-image and a pure-Python
Philox4x32-10 (checked against the published known-answer vectors in test_client_refs.py)."""

import math

import numpy as np

# --- random draws -----------------------------------------------------------------------------
_M32 = 0xFFFFFFFF


def philox4x32_10(counter, key):
    """Philox4x32 with 10 rounds (Salmon et al., SC 2011). counter: 4 uint32; key: 2 uint32."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(10):
        p0 = 0xD2511F53 * c0
        p1 = 0xCD9E8D57 * c2
        hi0, lo0 = p0 >> 32, p0 & _M32
        hi1, lo1 = p1 >> 32, p1 & _M32
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + 0x9E3779B9) & _M32
        k1 = (k1 + 0xBB67AE85) & _M32
    return c0, c1, c2, c3


def uniform(seed, sample, op_index, draw=0):
    """The service's per-sample draw in [0, 1): Philox keyed by the 64-bit seed on the counter
    (sample low, sample high, op index, draw), 53 bits taken from the first two words."""
    r = philox4x32_10((sample & _M32, (sample >> 32) & _M32, op_index, draw),
                      (seed & _M32, (seed >> 32) & _M32))
    bits = ((r[0] << 21) ^ (r[1] >> 11)) & ((1 << 53) - 1)
    return bits / float(1 << 53)


# --- geometry ---------------------------------------------------------------------------------
def rotation_inverse(angle_deg, h, w):
    """Output pixel (x, y) -> source position, counter-clockwise rotation about the centre."""
    t = math.radians(angle_deg)
    c, s = math.cos(t), math.sin(t)
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    return np.array([[c, -s, cx - c * cx + s * cy], [s, c, cy - s * cx - c * cy]])


def _resolve(idx, n, border):
    """Maps integer indices outside [0, n) through a border; returns (index, inside_mask)."""
    if border == "constant":
        inside = (idx >= 0) & (idx < n)
        return np.clip(idx, 0, n - 1), inside
    if border == "edge":
        return np.clip(idx, 0, n - 1), np.ones(idx.shape, bool)
    if border == "wrap":
        return np.mod(idx, n), np.ones(idx.shape, bool)
    if border == "reflect":  # cba|abc|cba
        period = 2 * n
        m = np.mod(idx, period)
        return np.where(m < n, m, period - 1 - m), np.ones(idx.shape, bool)
    if border == "reflect_101":  # cb|abc|ba
        if n == 1:
            return np.zeros_like(idx), np.ones(idx.shape, bool)
        period = 2 * n - 2
        m = np.mod(idx, period)
        return np.where(m < n, m, period - m), np.ones(idx.shape, bool)
    raise ValueError(border)


def warp_nearest(img, inverse, border="constant", fill=0.0):
    """Nearest-neighbour warp of one (H, W[, C]) image: takes floor(s + 0.5), resolved through
    ``border``; the output keeps the input's dtype."""
    h, w = img.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    sx = inverse[0, 0] * xs + inverse[0, 1] * ys + inverse[0, 2]
    sy = inverse[1, 0] * xs + inverse[1, 1] * ys + inverse[1, 2]
    ix = np.floor(sx + 0.5).astype(np.int64)
    iy = np.floor(sy + 0.5).astype(np.int64)
    rx, okx = _resolve(ix, w, border)
    ry, oky = _resolve(iy, h, border)
    out = img[ry, rx].copy()
    inside = okx & oky
    out[~inside] = np.asarray(fill).astype(img.dtype)
    return out


def skimage_rotate(img, angle, border="edge", fill=0.0, order=1):
    """skimage.transform.rotate in float64 with the service's border names."""
    from skimage.transform import rotate
    mode = {"constant": "constant", "edge": "edge", "reflect": "symmetric",
            "reflect_101": "reflect", "wrap": "wrap"}[border]
    return rotate(img.astype(np.float64), angle, order=order, mode=mode, cval=fill,
                  preserve_range=True)


def flip_nhwc(batch, axis):
    """np.flip of each sample of an (N, H, W[, C]) batch: "horizontal" mirrors W."""
    return np.flip(batch, axis=2 if axis == "horizontal" else 1)


# --- arithmetic --------------------------------------------------------------------------------
def saturate_cast(values, dtype):
    """Round half to even and saturate into an integer ``dtype`` (NaN -> 0); float16 saturates
    finite values at +-65504; float32 is a plain conversion."""
    dtype = np.dtype(dtype)
    v = np.asarray(values, dtype=np.float64)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        r = np.rint(np.nan_to_num(v, nan=0.0, posinf=info.max, neginf=info.min))
        return np.clip(r, info.min, info.max).astype(dtype)
    if dtype == np.float16:
        finite = np.isfinite(v)
        return np.where(finite, np.clip(v, -65504, 65504), v).astype(np.float16)
    return v.astype(dtype)
