"""Gaussian noise from a counter-based generator: the same bits on CPU and CUDA, drawn where it is used.

``normal_region`` gives standard normal float32 noise for any region of a canvas; the value at global
(c, y, x) is a pure function of (seed, stream, batch_index, step, c, y, x), so a region drawn alone
equals the same region of the whole canvas, whatever the tiling, and the numbers are drawn on the
canvas's own device (no host draw, no copy).

The generator is Philox-4x32-10 (Salmon, Moraes, Dror & Shaw, "Parallel random numbers: as easy as
1, 2, 3", SC'11): a keyed bijection of a 128-bit counter, 10 rounds; one of cuRAND's generators
and the one behind PyTorch's CUDA random numbers. Its published known-answer vectors (Random123
``kat_vectors``) pin this implementation in the tests. Per draw:

- key (k0, k1): the 64-bit blake2b hash of (seed, stream, batch_index, step), on the host;
- counter (x // 4, y, c, 0); its four output words are the lanes x = 4·(x // 4) + 0…3;
- words (w0, w1) → lanes 0, 1 and (w2, w3) → lanes 2, 3 by Box–Muller, both outputs used:
  r = √(−2 ln u), u = (1 + top 24 bits of the first word) / 2^24 ∈ (0, 1] (never 0, so the log is
  finite; every value exact in float32), θ = 2π · (top 24 bits of the second word) / 2^24; the lanes
  are r·cos θ and r·sin θ. |z| ≤ √(48 ln 2) ≈ 5.77 (a 24-bit uniform's limit; P(|N(0,1)| > 5.77)
  ≈ 8e-9).

Only operations whose result IEEE 754 and torch define exactly are used: int64 add, multiply
(wrapping modulo 2^64, see ``_mulhilo``), shifts, masks and xor; int↔float conversion of 24-bit
integers and bit views; and float32 +, − and ×, each its own torch op, rounded to nearest (no fused
multiply-add, nothing near the denormal range). ln, cos and sin are polynomials written out here,
and 1/x and √x Newton iterations, not ``torch.log``/``sin``/``sqrt`` or ``/``: the math libraries'
last bits differ between CPU and CUDA, CUDA divides by a scalar as a multiplication by its
reciprocal, and fast-math builds change ÷ and √, never × and +. So the same key and position give
the same bits on CPU and CUDA (``tests/test_counter_rng.py`` checks it where CUDA is present).
(A second reason on the CPU: ``torch.sqrt`` and ``torch.log`` split tensors from 2048 elements on
over OpenMP threads, and on a busy machine each such call waits milliseconds for a descheduled one.)
"""
import hashlib
import struct

import torch

__all__ = ["normal_region", "noise_key", "philox4x32_10"]

_M32 = 0xFFFFFFFF
_PHILOX_M0, _PHILOX_M1 = 0xD2511F53, 0xCD9E8D57   # round multipliers
_PHILOX_W0, _PHILOX_W1 = 0x9E3779B9, 0xBB67AE85   # key schedule (Weyl) increments
_ROUNDS = 10

# counters (4 outputs each) drawn at a time: bounds the temporaries (~12 int64 tensors of this
# size, 400 MB on CUDA; the latent of a 6000×4000 image has 750 000 counters). On the CPU every
# op's tensor stays under torch's intra-op grain (32768 elements), so a draw runs on the calling
# thread alone, in cache, with no OpenMP region to wait for on a busy machine
_CHUNK_COUNTERS = {"cpu": 32767, "cuda": 1 << 22}


def _f32(v):
    """v rounded to float32, so a constant means the same number on every device."""
    return struct.unpack("<f", struct.pack("<f", v))[0]


# 1/d ≈ 0.985 − 0.239·d on d ∈ [1 + √½, 1 + √2] (relative error ≤ 1.5 %; two Newton steps: 5e-8)
_RECIP_P, _RECIP_Q = _f32(0.985), _f32(-0.239)
_SQRT2_BITS = struct.unpack("<i", struct.pack("<f", 2 ** 0.5))[0]   # float32 √2
_TWO_LN2 = _f32(2 * 0.6931471805599453)
_PI_OVER_2_23 = _f32(3.141592653589793 / (1 << 23))   # an angle step of 2π/2^24, scaled by 4 below
# 2 ln f = 4 atanh(s) = s·(4 + 4/3 s² + 4/5 s⁴ + 4/7 s⁶ + 4/9 s⁸), |s| ≤ 0.172: error < 1e-9
_LN_COEF = tuple(_f32(4 / n) for n in (9, 7, 5, 3, 1))
# Taylor series of sin and cos on [0, π/4] (next terms < 2e-9)
_SIN_COEF = tuple(_f32(v) for v in (1 / 362880, -1 / 5040, 1 / 120, -1 / 6, 1.0))
_COS_COEF = tuple(_f32(v) for v in (-1 / 3628800, 1 / 40320, -1 / 720, 1 / 24, -1 / 2, 1.0))


def noise_key(seed, stream, batch_index, step):
    """The Philox key (k0, k1) of one draw: two 32-bit words of blake2b((seed, stream, batch_index, step))."""
    digest = hashlib.blake2b(f"tilediff-philox/{seed}/{stream}/{batch_index}/{step}".encode(), digest_size=8).digest()
    k = int.from_bytes(digest, "little")
    return k & _M32, k >> 32


def _mulhilo(a, m):
    """(high, low) 32-bit words of a·m for int64 tensors a in [0, 2^32) and a constant m < 2^32.

    The product is < 2^64 but may exceed 2^63: torch's int64 multiply then wraps modulo 2^64 (two's
    complement, on CPU and CUDA alike), which keeps all 64 bits of the true product; ``>> 32`` is
    arithmetic, so the high word is masked after it. (Checked against Python integers in the tests.)
    """
    p = a * m
    lo = p & _M32
    p >>= 32
    p &= _M32
    return p, lo


def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox-4x32-10 of the counter (c0, c1, c2, c3) under the key (k0, k1).

    Counter words: int64 tensors (or ints) in [0, 2^32), broadcast together; key words: ints.
    Returns the four output words, int64 tensors in [0, 2^32).
    """
    for r in range(_ROUNDS):
        if r:
            k0, k1 = (k0 + _PHILOX_W0) & _M32, (k1 + _PHILOX_W1) & _M32
        hi0, lo0 = _mulhilo(c0, _PHILOX_M0)
        hi1, lo1 = _mulhilo(c2, _PHILOX_M1)
        hi1 = hi1 ^ c1          # not in place: the first rounds' words broadcast to larger shapes
        hi1 ^= k0
        hi0 = hi0 ^ c3
        hi0 ^= k1
        c0, c1, c2, c3 = hi1, lo1, hi0, lo0
    return c0, c1, c2, c3


def _horner(x, coefs):
    """coefs[0]·x^(n−1) + … + coefs[−1], one rounded multiply and one rounded add per term."""
    p = torch.full_like(x, coefs[0])
    for c in coefs[1:]:
        p.mul_(x).add_(c)
    return p


def _radius(words):
    """√(−2 ln u) for u = (1 + words >> 8) / 2^24 ∈ (0, 1], float32."""
    m = ((words >> 8) + 1).to(torch.float32)          # [1, 2^24], exact
    bits = m.view(torch.int32)
    f_bits = (bits & 0x7FFFFF) | 0x3F800000           # m = 2^e·f, f ∈ [1, 2)
    big = (f_bits > _SQRT2_BITS).to(torch.int32)      # f > √2 (positive floats order as their bits)
    f_bits -= big << 23                               # then f/2: f ∈ (√½, √2], exact
    f = f_bits.view(torch.float32)
    minus_log2 = (24 + 127) - (bits >> 23) - big      # u = 2^−minus_log2 · f, minus_log2 ∈ [0, 24]
    s = (f - 1.0).mul_(_reciprocal(f + 1.0))          # (f − 1) / (f + 1), |s| ≤ 0.172
    two_ln_f = _horner(s * s, _LN_COEF).mul_(s)
    w = minus_log2.to(torch.float32).mul_(_TWO_LN2).sub_(two_ln_f)   # −2 ln u ≥ 0
    return _sqrt(w)


def _reciprocal(d):
    """1/d for d ∈ [1 + √½, 1 + √2]: a linear start and two Newton steps y ← y·(2 − d·y)."""
    y = (d * _RECIP_Q).add_(_RECIP_P)
    for _ in range(2):
        y.mul_((d * y).neg_().add_(2.0))
    return y


def _sqrt(w):
    """√w for float32 w ≥ 0 (to a few ulp): the bit-level guess of 1/√w, three Newton steps
    y ← y·(1.5 − ½·w·y²), times w. √0 = 0."""
    wc = w.clamp_min(1e-30)
    y = (0x5F3759DF - (wc.view(torch.int32) >> 1)).view(torch.float32)   # relative error ≤ 3.5 %
    for _ in range(3):                                # → 1.8e-3 → 4.6e-6 → rounding
        y.mul_((wc * y).mul_(y).mul_(-0.5).add_(1.5))
    return y.mul_(w)


def _cos_sin(words):
    """(cos θ, sin θ) for θ = 2π · (words >> 8) / 2^24, float32.

    The octant q and the angle inside it come exactly from the integer bits; sin and cos of an angle
    a ∈ [0, π/4] are polynomials, and the octant's symmetry gives cos θ, sin θ from them. (Selections
    are products with exact 0/1 and ±1 factors: ``torch.where`` is ten times slower on the CPU.)
    """
    k = (words >> 8).to(torch.int32)                  # [0, 2^24)
    q = k >> 21                                       # octant: θ = (π/4)·(q + j / 2^21)
    j = k & ((1 << 21) - 1)
    j += (q & 1) * ((1 << 21) - 2 * j)                # odd octants: measured back from the octant's end
    a = j.to(torch.float32).mul_(_PI_OVER_2_23)      # [0, π/4]
    a2 = a * a
    s = _horner(a2, _SIN_COEF).mul_(a)
    c = _horner(a2, _COS_COEF)
    swap = (((q + 1) >> 1) & 1).to(torch.float32)    # octants 1, 2, 5, 6: sin θ = ±cos a
    keep = 1.0 - swap
    sin = (s * keep).add_(c * swap)                   # exact: one of the two terms is 0
    cos = (c * keep).add_(s * swap)
    sin.mul_(1.0 - 2.0 * (q >> 2).to(torch.float32))             # octants 4…7: sin θ < 0
    cos.mul_(1.0 - 2.0 * (((q + 2) >> 2) & 1).to(torch.float32))  # octants 2…5: cos θ < 0
    return cos, sin


def normal_region(seed, stream, step, channels, y0, y1, x0, x1, device, batch_index=0):
    """Standard normal float32 noise (channels, y1−y0, x1−x0) on ``device`` for a region of a canvas.

    The value at global (c, y, x) depends only on (seed, stream, batch_index, step, c, y, x): any two
    regions agree where they overlap, on any device (bit for bit on CPU and CUDA). ``stream``
    separates independent canvases of one run (e.g. the sampler's runs); ``batch_index`` the images
    of a batch; ``step`` the sampler's time steps.
    """
    if not (0 <= y0 <= y1 <= 1 << 32 and 0 <= x0 <= x1 <= 1 << 34 and 0 <= channels <= 1 << 32):
        raise ValueError(f"region out of range: channels={channels}, y {y0}:{y1}, x {x0}:{x1}")
    device = torch.device(device)
    out = torch.empty(channels, y1 - y0, x1 - x0, device=device)
    if out.numel() == 0:
        return out
    k0, k1 = noise_key(seed, stream, batch_index, step)
    g0, g1 = x0 >> 2, ((x1 - 1) >> 2) + 1             # groups of 4 lanes covering x0:x1
    # lane l of group g0 + i lands at column 4i + l − (x0 − 4·g0) of ``out``: the groups and columns
    # of each lane, those left of x0 dropped
    lanes = []
    for lane in range(4):
        first = lane - (x0 - 4 * g0)
        skip = 1 if first < 0 else 0
        count = len(range(first + 4 * skip, x1 - x0, 4))
        lanes.append((skip, skip + count, first + 4 * skip))
    counter_x = torch.arange(g0, g1, device=device).view(1, 1, -1)
    counter_c = torch.arange(channels, device=device).view(-1, 1, 1)
    rows = max(1, _CHUNK_COUNTERS.get(device.type, _CHUNK_COUNTERS["cuda"]) // (channels * (g1 - g0)))
    for ya in range(y0, y1, rows):
        yb = min(y1, ya + rows)
        counter_y = torch.arange(ya, yb, device=device).view(1, -1, 1)
        words = philox4x32_10(counter_x, counter_y, counter_c, 0, k0, k1)   # each (channels, rows, groups)
        for pair in range(2):   # Box–Muller on (w0, w1) → lanes 0, 1 and on (w2, w3) → lanes 2, 3
            radius = _radius(words[2 * pair])
            for lane, trig in zip((2 * pair, 2 * pair + 1), _cos_sin(words[2 * pair + 1])):
                g_start, g_end, column = lanes[lane]
                if g_end > g_start:
                    torch.mul(radius[..., g_start:g_end], trig[..., g_start:g_end],
                              out=out[:, ya - y0:yb - y0, column::4])
    return out
