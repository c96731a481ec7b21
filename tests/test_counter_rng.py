"""The counter-based noise generator (tilediff.engine.counter_rng): Philox-4x32-10 → Box–Muller."""
import math

import pytest
import torch

from tilediff.engine import counter_rng
from tilediff.engine.counter_rng import noise_key, normal_region, philox4x32_10

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]
M32 = 0xFFFFFFFF


# ---- an independent scalar reference: Python integers and float64 math --------------------------

def _philox_ref(ctr, key):
    c, (k0, k1) = list(ctr), key
    for r in range(10):
        if r:
            k0, k1 = (k0 + 0x9E3779B9) & M32, (k1 + 0xBB67AE85) & M32
        p0, p1 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k0, p1 & M32, (p0 >> 32) ^ c[3] ^ k1, p0 & M32]
    return c


def _normal_ref(seed, stream, batch_index, step, c, y, x):
    """The documented algorithm for one value, in float64."""
    words = _philox_ref((x // 4, y, c, 0), noise_key(seed, stream, batch_index, step))
    pair, lane = divmod(x % 4, 2)
    wr, wa = words[2 * pair], words[2 * pair + 1]
    r = math.sqrt(-2 * math.log(((wr >> 8) + 1) / 2 ** 24))
    theta = 2 * math.pi * (wa >> 8) / 2 ** 24
    return r * (math.sin(theta) if lane else math.cos(theta))


# ---- the generator is Philox-4x32-10 ---------------------------------------------------------------

# Random123 tests/kat_vectors, "philox4x32 10" lines: counter words, key words, output words
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((M32,) * 4, (M32, M32), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("device", DEVICES)
def test_philox_matches_the_published_known_answers(device):
    for ctr, key, expected in KAT:
        words = philox4x32_10(*(torch.tensor([v], device=device) for v in ctr), *key)
        assert tuple(int(w) for w in words) == expected
        assert _philox_ref(ctr, key) == list(expected)   # and so does the test's own reference


@pytest.mark.parametrize("device", DEVICES)
def test_mulhilo_is_exact_where_the_int64_product_overflows(device):
    """a·m ≥ 2^63 wraps in torch's int64 multiply; the two 32-bit words must still be exact."""
    edges = [0, 1, 2, 0x7FFFFFFF, 0x80000000, 0xD2511F53, 0xCD9E8D57, M32 - 1, M32]
    a = torch.cat([torch.tensor(edges), torch.randint(0, 1 << 32, (4096,), generator=torch.Generator().manual_seed(0))])
    for m in (0xD2511F53, 0xCD9E8D57):
        hi, lo = counter_rng._mulhilo(a.to(device), m)
        expected = [(v * m) >> 32 for v in a.tolist()], [(v * m) & M32 for v in a.tolist()]
        assert (hi.tolist(), lo.tolist()) == expected


# ---- the value at (c, y, x) depends only on the key and the position --------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_any_two_regions_agree_on_their_overlap(device):
    whole = normal_region(7, 0, 3, 5, 0, 75, 0, 93, device)
    for y0, y1, x0, x1 in [(37, 61, 63, 90), (1, 2, 1, 2), (0, 75, 3, 4), (11, 74, 1, 92), (5, 9, 6, 7),
                           (74, 75, 0, 93), (20, 33, 89, 93)]:
        part = normal_region(7, 0, 3, 5, y0, y1, x0, x1, device)
        assert torch.equal(part, whole[:, y0:y1, x0:x1]), (y0, y1, x0, x1)
    # overlapping regions with odd offsets agree with each other too, and on fewer channels
    a = normal_region(7, 0, 3, 2, 13, 57, 21, 80, device)
    b = normal_region(7, 0, 3, 5, 40, 75, 47, 93, device)
    assert torch.equal(a[:, 27:, 26:], b[:2, :17, :33])


@pytest.mark.parametrize("device", DEVICES)
def test_tiles_stitch_into_the_whole_canvas_for_any_tile_size(device):
    whole = normal_region(3, 1, 9, 4, 0, 70, 0, 101, device, batch_index=2)
    for th, tw in [(7, 5), (64, 64), (13, 101), (70, 1)]:
        stitched = torch.empty_like(whole)
        for y in range(0, 70, th):
            for x in range(0, 101, tw):
                stitched[:, y:y + th, x:x + tw] = normal_region(3, 1, 9, 4, y, min(70, y + th), x, min(101, x + tw),
                                                                device, batch_index=2)
        assert torch.equal(stitched, whole), (th, tw)


@pytest.mark.parametrize("device", DEVICES)
def test_the_chunk_size_does_not_change_the_numbers(device, monkeypatch):
    whole = normal_region(5, 0, 2, 3, 0, 40, 0, 50, device)
    monkeypatch.setitem(counter_rng._CHUNK_COUNTERS, torch.device(device).type, 7)   # one row per chunk
    assert torch.equal(normal_region(5, 0, 2, 3, 0, 40, 0, 50, device), whole)


def test_every_part_of_the_key_changes_the_numbers():
    base = normal_region(7, 0, 3, 2, 0, 20, 0, 30, "cpu")
    assert torch.equal(normal_region(7, 0, 3, 2, 0, 20, 0, 30, "cpu"), base)
    for other in [normal_region(8, 0, 3, 2, 0, 20, 0, 30, "cpu"),                  # seed
                  normal_region(7, 1, 3, 2, 0, 20, 0, 30, "cpu"),                  # stream
                  normal_region(7, 0, 4, 2, 0, 20, 0, 30, "cpu"),                  # step
                  normal_region(7, 0, 3, 2, 0, 20, 0, 30, "cpu", batch_index=1)]:  # batch index
        assert not (other == base).any()


def test_regions_are_checked_and_empty_ones_are_empty():
    assert normal_region(0, 0, 1, 3, 5, 5, 0, 9, "cpu").shape == (3, 0, 9)
    assert normal_region(0, 0, 1, 0, 0, 4, 0, 9, "cpu").shape == (0, 4, 9)
    for bad in [(3, -1, 4, 0, 9), (3, 0, 4, -2, 9), (3, 5, 4, 0, 9), (-1, 0, 4, 0, 9)]:
        with pytest.raises(ValueError):
            normal_region(0, 0, 1, *bad, "cpu")


# ---- known answers: a change of the algorithm is noticed ------------------------------------------

def _bits(z):
    return [f"{v & M32:08x}" for v in z.flatten().view(torch.int32).tolist()]


def test_known_values_are_pinned():
    assert noise_key(0, 0, 0, 1) == (0x0BD7ACB1, 0x869C453B)
    z = normal_region(0, 0, 1, 2, 3, 5, 5, 9, "cpu")
    assert _bits(z) == ["bfc24350", "3f95d5d6", "3efb2212", "3facec3c", "3f838d02", "3eed6b69", "bea43777", "3f8dc153",
                        "40000bc2", "3e50e725", "3fa36eb1", "bf34bfb8", "bf4a8112", "3fe96075", "bfcdf967", "bfa780cd"]
    assert z[0, 0, :2].tolist() == [-1.517679214477539, 1.1705882549285889]
    z = normal_region(12345, 3, 100, 1, 1000, 1001, 2001, 2005, "cpu", batch_index=2)
    assert _bits(z) == ["3fb1bf8a", "c001a742", "3fcc3a97", "3f0096a6"]


def test_values_follow_the_documented_algorithm():
    """Philox words → Box–Muller, checked against float64 math for every lane and both outputs."""
    z = normal_region(12345, 3, 100, 3, 997, 1001, 2001, 2011, "cpu", batch_index=2)
    for c in range(3):
        for y in range(997, 1001):
            for x in range(2001, 2011):
                ref = _normal_ref(12345, 3, 2, 100, c, y, x)
                assert abs(z[c, y - 997, x - 2001].item() - ref) < 2e-6 * max(1, abs(ref)), (c, y, x)


def test_polynomials_and_newton_steps_are_accurate_over_the_whole_word_range():
    words = torch.cat([torch.tensor([0, 255, 256, 1 << 31, M32]),
                       torch.randint(0, 1 << 32, (1 << 18,), generator=torch.Generator().manual_seed(1))])
    u = ((words >> 8) + 1).double() / 2 ** 24
    assert (counter_rng._radius(words).double() - torch.sqrt(-2 * torch.log(u))).abs().max() < 1e-6
    assert counter_rng._radius(torch.tensor([M32])).item() == 0.0                      # u = 1
    assert abs(counter_rng._radius(torch.tensor([0])).item() - math.sqrt(48 * math.log(2))) < 1e-6   # u = 2^-24
    w = torch.linspace(0, 34, 100001)
    assert ((counter_rng._sqrt(w).double() - w.double().sqrt()).abs() <= 3e-7 * w.double().sqrt()).all()
    d = torch.linspace(1 + 0.5 ** 0.5, 1 + 2 ** 0.5, 100001)
    assert ((counter_rng._reciprocal(d).double() * d.double() - 1).abs() < 3e-7).all()
    theta = 2 * math.pi * (words >> 8).double() / 2 ** 24
    cos, sin = counter_rng._cos_sin(words)
    assert (cos.double() - torch.cos(theta)).abs().max() < 3e-7
    assert (sin.double() - torch.sin(theta)).abs().max() < 3e-7


# ---- statistics of a 10^6-sample draw --------------------------------------------------------------

@pytest.fixture(scope="module")
def draw():
    return normal_region(11, 0, 5, 4, 0, 500, 0, 500, "cpu").double()   # 10^6 values


def _corr(a, b):
    a, b = a - a.mean(), b - b.mean()
    return ((a * b).mean() / (a.std() * b.std())).item()


def test_moments_match_the_standard_normal(draw):
    n = draw.numel()
    assert abs(draw.mean().item()) < 5 / math.sqrt(n)
    assert abs(draw.std().item() - 1) < 5 / math.sqrt(2 * n)
    assert abs((draw ** 3).mean().item()) < 5 * math.sqrt(15 / n)        # skewness
    assert abs((draw ** 4).mean().item() - 3) < 5 * math.sqrt(96 / n)    # kurtosis
    tail = (draw.abs() > 3).double().mean().item()
    p = math.erfc(3 / math.sqrt(2))
    assert abs(tail - p) < 5 * math.sqrt(p / n)


def test_kolmogorov_smirnov_against_the_normal_cdf(draw):
    x, _ = draw.flatten().sort()
    n = x.numel()
    cdf = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
    i = torch.arange(1, n + 1, dtype=torch.float64)
    d = torch.maximum(i / n - cdf, cdf - (i - 1) / n).max().item()
    assert d * math.sqrt(n) < 1.95   # the 0.1 % critical value of the KS statistic


def test_no_correlation_between_neighbours_channels_steps_seeds_streams(draw):
    bound = 5 / math.sqrt(draw.numel())   # 5 standard errors of a correlation coefficient
    pairs = {f"x lag {k}": (draw[..., k:], draw[..., :-k]) for k in range(1, 6)}   # lags 1, 3 cross lanes
    pairs.update({"y lag 1": (draw[:, 1:], draw[:, :-1]), "channel": (draw[1:], draw[:-1])})
    for name, key in [("step", (11, 0, 6, 0)), ("seed", (12, 0, 5, 0)), ("stream", (11, 1, 5, 0)),
                      ("batch index", (11, 0, 5, 1))]:
        seed, stream, step, batch_index = key
        pairs[name] = (draw, normal_region(seed, stream, step, 4, 0, 500, 0, 500, "cpu", batch_index).double())
    for name, (a, b) in pairs.items():
        assert abs(_corr(a, b)) < bound, name
        assert abs(_corr(a ** 2, b ** 2)) < bound, name + " (squares: the two Box–Muller outputs share a radius)"


# ---- CPU and CUDA draw the same bits ----------------------------------------------------------------

@CUDA
def test_cpu_and_cuda_draw_bit_identical_numbers():
    for seed, step, c, y0, y1, x0, x1 in [(0, 1, 8, 0, 97, 0, 131), (123456789, 100, 3, 1001, 1290, 4095, 4321)]:
        cpu = normal_region(seed, 2, step, c, y0, y1, x0, x1, "cpu", batch_index=1)
        gpu = normal_region(seed, 2, step, c, y0, y1, x0, x1, "cuda", batch_index=1)
        assert gpu.device.type == "cuda"
        assert torch.equal(gpu.cpu().view(torch.int32), cpu.view(torch.int32))
