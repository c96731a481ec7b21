"""Fused NAFBlock kernels (tilediff.kernels) against their plain-PyTorch references.

Without a GPU the kernels run under the Triton interpreter on CPU: TRITON_INTERPRET must be set
before triton (or tilediff.kernels.triton_kernels) is first imported, so it is set here, at the very
top, unless CUDA is available and the caller left it unset (then the tests run compiled on CUDA —
that is what benchmarks/gpu_check.sh does).  Every output is poisoned with NaN before a kernel
runs, so an element the kernel forgets to write fails the test.
"""
import os

if "TRITON_INTERPRET" not in os.environ:
    try:
        import torch as _torch
        _has_cuda = _torch.cuda.is_available()
    except Exception:
        _has_cuda = False
    if not _has_cuda:
        os.environ["TRITON_INTERPRET"] = "1"

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed")
try:
    from tilediff.kernels import triton_kernels as tk
except Exception as exc:  # pragma: no cover - triton present but unusable
    pytest.skip(f"triton kernels do not import: {exc!r}", allow_module_level=True)
from tilediff.kernels import nafblock as nb
from tilediff.kernels import reference as R

if tk.INTERPRET:
    DEVICE = "cpu"                   # the interpreter runs the kernels on CPU tensors
elif torch.cuda.is_available():
    DEVICE = "cuda"
else:
    pytest.skip("kernels were compiled (TRITON_INTERPRET unset) but there is no CUDA device",
                allow_module_level=True)
ON_CUDA = DEVICE == "cuda"

TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 3e-2}
SHAPES = [(1, 16, 7, 13), (3, 48, 17, 9), (1, 128, 17, 9), (3, 128, 7, 13)]
SHAPE_IDS = ["b1c16_7x13", "b3c48_17x9", "b1c128_17x9", "b3c128_7x13"]

BF16_DOT_SKIP = pytest.mark.skipif(
    not ON_CUDA, reason="Triton interpreter has no usable bfloat16 tl.dot (it returns garbage on triton "
                        "3.9's CPU interpreter); bf16 GEMM paths run on CUDA only")


def _cases(bf16_in_interpreter=False):
    """(dtype, shape, layout) combinations: every shape in both layouts for fp32; every shape once
    (layouts alternating) for fp16 and bf16 on CUDA, two shapes under the (slow) interpreter.
    bf16 is skipped under the interpreter unless the kernel has no tl.dot (bf16_in_interpreter)."""
    out = []
    for dtype, did in ((torch.float32, "fp32"), (torch.float16, "fp16"), (torch.bfloat16, "bf16")):
        marks = [BF16_DOT_SKIP] if dtype == torch.bfloat16 and not bf16_in_interpreter else []
        for i, (shape, sid) in enumerate(zip(SHAPES, SHAPE_IDS)):
            for layout in ("nchw", "cl"):
                if dtype != torch.float32:
                    keep = ((i, layout) in ((1, "nchw"), (2, "cl")) if not ON_CUDA
                            else layout == ("nchw", "cl")[i % 2])
                    if not keep:
                        continue
                out.append(pytest.param(dtype, shape, layout, id=f"{did}-{sid}-{layout}", marks=marks))
    return out


CASES = _cases()
CASES_NO_DOT = _cases(bf16_in_interpreter=True)   # kernels without tl.dot: bf16 works in the interpreter


@pytest.fixture(autouse=True)
def _exact_fp32():
    """On CUDA compare ieee fp32 with ieee fp32 (the reference's cuDNN conv would use TF32)."""
    if not ON_CUDA:
        yield
        return
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def rel_err(out, ref):
    out = out.detach().double()
    ref = ref.detach().double()
    return ((out - ref).norm() / ref.norm()).item()


def check(out, ref, dtype, what=""):
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert torch.isfinite(out).all(), f"{what}: non-finite output (unwritten element?)"
    e = rel_err(out, ref)
    assert e <= TOL[dtype], f"{what}: relative error {e:.3e} > {TOL[dtype]:.0e}"


def gen(seed):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0, dtype=torch.float32, layout="nchw"):
        t = (torch.randn(*shape, generator=g) * scale).to(dtype=dtype, device=DEVICE)
        if layout == "cl" and t.dim() == 4:
            t = t.to(memory_format=torch.channels_last)
        return t
    return rnd


def poisoned(shape, dtype, layout):
    fmt = torch.channels_last if layout == "cl" else torch.contiguous_format
    return torch.full(shape, float("nan"), dtype=dtype, device=DEVICE).to(memory_format=fmt)


def assert_layout(t, layout):
    if layout == "cl":
        assert t.is_contiguous(memory_format=torch.channels_last)
    else:
        assert t.is_contiguous()


# ---------------------------------------------------------------------------------------------
# single kernels
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype,shape,layout", CASES_NO_DOT)
def test_ln_modulate(dtype, shape, layout):
    B, c, H, W = shape
    rnd = gen(1)
    x = rnd(B, c, H, W, dtype=dtype, layout=layout) + 0.5   # a mean offset per pixel
    g = 1 + 0.2 * rnd(1, c, 1, 1, dtype=dtype)
    scale = 0.3 * rnd(B, c, 1, 1, dtype=dtype)
    shift = 0.3 * rnd(B, c, 1, 1, dtype=dtype)
    out = tk.ln_modulate(x, g, scale, shift, out=poisoned(shape, dtype, layout))
    assert_layout(out, layout)
    check(out, R.reference_ln_modulate(x, g, scale, shift), dtype, "ln_modulate")


def test_ln_without_modulation_and_broadcast_mods():
    rnd = gen(2)
    x = rnd(3, 48, 7, 13)
    g = rnd(48)
    out = tk.ln_modulate(x, g, out=poisoned(x.shape, x.dtype, "nchw"))
    check(out, R.reference_ln_modulate(x, g), torch.float32, "ln, no modulation")
    sc, sh = rnd(1, 48, 1, 1), rnd(1, 48, 1, 1)                 # (1, c, 1, 1): one for the batch
    out = tk.ln_modulate(x, g, sc, sh, out=poisoned(x.shape, x.dtype, "nchw"))
    check(out, R.reference_ln_modulate(x, g, sc, sh), torch.float32, "ln, broadcast modulation")


@pytest.mark.parametrize("dtype,shape,layout", CASES_NO_DOT)
def test_dwconv_gate_pool(dtype, shape, layout):
    B, c, H, W = shape
    rnd = gen(3)
    u = rnd(B, 2 * c, H, W, dtype=dtype, layout=layout)
    w = rnd(2 * c, 1, 3, 3, scale=1 / 3, dtype=dtype)
    b = rnd(2 * c, scale=0.1, dtype=dtype)
    pool = torch.zeros(B, c, device=DEVICE)
    out, pool = tk.dwconv_gate_pool(u, w, b, out=poisoned((B, c, H, W), dtype, layout), pool=pool)
    assert_layout(out, layout)
    ref, ref_pool = R.reference_dwconv_gate_pool(u, w, b)
    check(out, ref, dtype, "dwconv_gate_pool out")
    # the pool sums what was stored; compare with the sums of the kernel's own output too
    check(pool, out.float().sum(dim=(2, 3)), torch.float32, "pool vs own output")
    check(pool, ref_pool, dtype, "pool vs reference")


@pytest.mark.parametrize("tiles", [dict(BLOCK_C=2, TILE_H=4, TILE_W=8), dict(BLOCK_C=16, TILE_H=8, TILE_W=4)])
@pytest.mark.parametrize("dtype,shape,layout", [(torch.float32, (3, 48, 17, 9), "nchw"),
                                                (torch.float32, (1, 16, 7, 13), "cl"),
                                                (torch.float16, (1, 128, 17, 9), "nchw")])
def test_dwconv_gate_pool_2d_tiles(tiles, dtype, shape, layout, monkeypatch):
    """The 2-D-tile variant (chosen by a launch configuration with TILE_H/TILE_W): tiles that do not
    divide H or W, several channel blocks, both layouts."""
    B, c, H, W = shape
    key = ("dw", c, layout == "cl")
    monkeypatch.setitem(tk.CONFIG_OVERRIDES, key, dict(tiles, num_warps=4))
    rnd = gen(13)
    u = rnd(B, 2 * c, H, W, dtype=dtype, layout=layout)
    w = rnd(2 * c, 1, 3, 3, scale=1 / 3, dtype=dtype)
    b = rnd(2 * c, scale=0.1, dtype=dtype)
    out, pool = tk.dwconv_gate_pool(u, w, b, out=poisoned((B, c, H, W), dtype, layout),
                                    pool=torch.zeros(B, c, device=DEVICE))
    assert_layout(out, layout)
    ref, ref_pool = R.reference_dwconv_gate_pool(u, w, b)
    check(out, ref, dtype, "2-D tiles out")
    check(pool, ref_pool, dtype, "2-D tiles pool")


def test_config_override_text_round_trip(tmp_path):
    keys = [("gemm", 64, 128, torch.float16, False, True, False), ("gemm", 64, 64, torch.float32, True, False, True),
            ("dw", 512, False), ("ln", 256, True), ("sca", 64), ("ffn", 64, torch.float16, True)]
    for key in keys:
        assert tk.override_key_from_text(tk.override_key_to_text(key)) == key
    # keys written before the layout was part of them were swept on NCHW tensors
    assert tk.override_key_from_text("gemm:64:128:float16:0:1") == ("gemm", 64, 128, torch.float16, False, True, False)
    assert tk.override_key_from_text("ffn:64:float16") == ("ffn", 64, torch.float16, False)
    with pytest.raises(ValueError, match="kernel launch key"):
        tk.override_key_from_text("gemm:64:x")


@pytest.mark.parametrize("B,c", [(1, 16), (3, 48), (3, 128), (2, 300)])
def test_sca_vector(B, c):
    rnd = gen(8)
    pool = rnd(B, c) * 50
    w, b = rnd(c, c, 1, 1, scale=c ** -0.5, dtype=torch.float16), rnd(c, scale=0.1)
    out = torch.full((B, c), float("nan"), device=DEVICE)
    tk.sca_vector(pool, 91, w, b, out=out)
    check(out, R.reference_sca_vector(pool, 91, w, b), torch.float32, "sca_vector")


GEMM_VARIANTS = {
    "plain": dict(),                                          # conv1x1 + bias
    "ln_mod": dict(ln=True),                                  # conv1: LN1 + modulation prologue
    "scale_res": dict(in_scale=True, residual=True, coef=True),   # conv3: x + beta*conv3(x1*s)
    "res": dict(residual=True, coef=True),                    # conv5: y + gamma*conv5(.)
    "ln_gate": dict(ln=True, gate=True),                      # conv4 + SimpleGate
    "ln_gate_cam": dict(ln=True, gate=True, cam=True),        # conv4 + SimpleGate + cam (bokeh)
}


@pytest.mark.parametrize("variant", list(GEMM_VARIANTS))
@pytest.mark.parametrize("dtype,shape,layout", CASES)
def test_conv1x1_fused(dtype, shape, layout, variant):
    spec = GEMM_VARIANTS[variant]
    B, c, H, W = shape
    rnd = gen(4)
    x = rnd(B, c, H, W, dtype=dtype, layout=layout)
    ct = 2 * c if spec.get("gate") or variant in ("plain", "ln_mod") else c
    cout = c if spec.get("gate") else ct
    w = rnd(ct, c, 1, 1, scale=c ** -0.5, dtype=dtype)
    b = rnd(ct, scale=0.1, dtype=dtype)
    kw = {}
    if spec.get("ln"):
        kw["ln"] = (1 + 0.2 * rnd(1, c, 1, 1, dtype=dtype), 0.3 * rnd(B, c, 1, 1, dtype=dtype),
                    0.3 * rnd(B, c, 1, 1, dtype=dtype))
    if spec.get("in_scale"):
        kw["in_scale"] = rnd(B, c)                              # fp32, as the fused block passes it
    if spec.get("cam"):
        kw["cam"] = (0.3 * rnd(B, cout, 1, 1, dtype=dtype), 0.3 * rnd(B, cout, 1, 1, dtype=dtype))
    if spec.get("residual"):
        kw["residual"] = rnd(B, cout, H, W, dtype=dtype, layout=layout)
    if spec.get("coef"):
        kw["coef"] = rnd(1, cout, 1, 1, dtype=dtype)
    out = tk.conv1x1_fused(x, w, b, gate=bool(spec.get("gate")), out=poisoned((B, cout, H, W), dtype, layout),
                           **kw)
    assert_layout(out, layout)
    ref = R.reference_conv1x1(x, w, b, gate=bool(spec.get("gate")), **kw)
    check(out, ref, dtype, f"conv1x1_fused[{variant}]")


# ---------------------------------------------------------------------------------------------
# the whole block
# ---------------------------------------------------------------------------------------------

def block_inputs(shape, dtype, layout, seed=5):
    B, c, H, W = shape
    rnd = gen(seed)
    p = nb.NAFBlockParams(
        g1=1 + 0.2 * rnd(1, c, 1, 1), g2=1 + 0.2 * rnd(1, c, 1, 1),
        w1=rnd(2 * c, c, 1, 1, scale=c ** -0.5), b1=rnd(2 * c, scale=0.1),
        w2=rnd(2 * c, 1, 3, 3, scale=1 / 3), b2=rnd(2 * c, scale=0.1),
        w_sca=rnd(c, c, 1, 1, scale=c ** -0.5), b_sca=rnd(c, scale=0.1),
        w3=rnd(c, c, 1, 1, scale=c ** -0.5), b3=rnd(c, scale=0.1),
        w4=rnd(2 * c, c, 1, 1, scale=c ** -0.5), b4=rnd(2 * c, scale=0.1),
        w5=rnd(c, c, 1, 1, scale=c ** -0.5), b5=rnd(c, scale=0.1),
        beta=rnd(1, c, 1, 1), gamma=rnd(1, c, 1, 1))
    p = nb.NAFBlockParams(**{k: v.to(dtype) for k, v in vars(p).items()})
    x = rnd(B, c, H, W, dtype=dtype, layout=layout)
    # as the network makes them: chunks (non-contiguous views) of one (B, 4c, 1, 1) tensor
    mods = tuple((0.3 * rnd(B, 4 * c, 1, 1, dtype=dtype)).chunk(4, dim=1))
    cam = tuple((0.3 * rnd(B, 2 * c, 1, 1, dtype=dtype)).chunk(2, dim=1))
    return x, p, mods, cam


def _block_cases():
    """Each fp32 shape once (layouts alternating), plus the fp16/bf16 cases; with and without cam
    on CUDA, cam alternating under the interpreter (to keep the file under a minute on 2 cores)."""
    out, n_case = [], 0
    for i, prm in enumerate(CASES):
        dtype, shape, layout = prm.values
        if dtype == torch.float32 and (i % 2) != (SHAPES.index(shape) % 2):
            continue
        n_case += 1
        for with_cam in (False, True):
            if not ON_CUDA and with_cam != bool(n_case % 2):
                continue
            out.append(pytest.param(dtype, shape, layout, with_cam, marks=prm.marks,
                                    id=f"{prm.id}-{'cam' if with_cam else 'plain'}"))
    return out


@pytest.mark.parametrize("dtype,shape,layout,with_cam", _block_cases())
def test_fused_nafblock(dtype, shape, layout, with_cam, monkeypatch):
    monkeypatch.setattr(nb, "POISON_INTERMEDIATES", True)
    x, p, mods, cam = block_inputs(shape, dtype, layout)
    cam = cam if with_cam else None
    with torch.no_grad():
        out = nb.fused_nafblock_forward(x, p, mods, cam, out=poisoned(shape, dtype, layout))
        ref = nb.reference_nafblock_forward(x, p, mods, cam)
    assert_layout(out, layout)
    check(out, ref, dtype, f"fused_nafblock_forward cam={with_cam}")


@pytest.mark.parametrize("mode,shape", [("separate", (3, 48, 17, 9)), ("fused", (1, 128, 17, 9))])
def test_fused_nafblock_forced_ln_mode(mode, shape, monkeypatch):
    """TILEDIFF_KERNELS_LN forces the standalone ln_modulate kernel + plain 1x1 convs below the
    automatic threshold, or the LayerNorm in the GEMM prologue above it."""
    monkeypatch.setenv("TILEDIFF_KERNELS_LN", mode)
    automatic = shape[1] >= nb.SEPARATE_LN_FROM
    assert nb.separate_layernorm(shape[1]) == (mode == "separate") and (mode == "separate") != automatic
    monkeypatch.setattr(nb, "POISON_INTERMEDIATES", True)
    x, p, mods, cam = block_inputs(shape, torch.float32, "nchw", seed=6)
    with torch.no_grad():
        out = nb.fused_nafblock_forward(x, p, mods, cam)
    check(out, nb.reference_nafblock_forward(x, p, mods, cam), torch.float32, f"{mode} LN")


def test_layernorm_mode_choice(monkeypatch):
    monkeypatch.delenv("TILEDIFF_KERNELS_LN", raising=False)
    assert not nb.separate_layernorm(64) and nb.separate_layernorm(128) and nb.separate_layernorm(512)
    monkeypatch.setenv("TILEDIFF_KERNELS_LN", "sideways")
    with pytest.raises(ValueError, match="TILEDIFF_KERNELS_LN"):
        nb.separate_layernorm(64)


FFN_CASES = [prm for prm in CASES if prm.values[1][1] <= 64]


@pytest.mark.parametrize("with_cam", [False, True])
@pytest.mark.parametrize("dtype,shape,layout", FFN_CASES)
def test_ffn_fused(dtype, shape, layout, with_cam):
    """The block's second half in one kernel (conv3 + SCA scale + beta residual, LN2 + modulation,
    conv4 + gate [+ cam], conv5 + gamma residual) against the three reference 1x1 convs."""
    B, c, H, W = shape
    x, p, mods, cam = block_inputs(shape, dtype, layout, seed=9)
    x1 = gen(10)(B, c, H, W, dtype=dtype, layout=layout)
    s = gen(11)(B, c)                                   # fp32 (B, c), as sca_vector makes it
    args = (x1, x, s, p.w3, p.b3, p.beta, p.g2, mods[3], mods[2], p.w4, p.b4, p.w5, p.b5, p.gamma)
    cam = cam if with_cam else None
    out = tk.ffn_fused(*args, cam=cam, out=poisoned(shape, dtype, layout))
    assert_layout(out, layout)
    check(out, R.reference_ffn_fused(*args, cam=cam), dtype, f"ffn_fused cam={with_cam}")


def test_ffn_fused_rejects_wide_blocks():
    c = tk.FFN_FUSED_MAX_C * 2
    x, p, mods, _ = block_inputs((1, c, 3, 5), torch.float32, "nchw")
    with pytest.raises(ValueError, match="ffn_fused handles up to"):
        tk.ffn_fused(x, x, torch.zeros(1, c), p.w3, p.b3, p.beta, p.g2, None, None,
                     p.w4, p.b4, p.w5, p.b5, p.gamma)


def test_ffn_mode_choice_and_switch(monkeypatch):
    """ffn_fused below FFN_FUSED_MAX_C with the LayerNorm in the GEMM; TILEDIFF_KERNELS_FFN=0 gives
    the three 1x1-conv launches, with the same result."""
    monkeypatch.delenv("TILEDIFF_KERNELS_LN", raising=False)
    monkeypatch.delenv("TILEDIFF_KERNELS_FFN", raising=False)
    assert nb.fused_ffn(16) and nb.fused_ffn(64) and not nb.fused_ffn(128)
    monkeypatch.setenv("TILEDIFF_KERNELS_LN", "separate")
    assert not nb.fused_ffn(16)
    monkeypatch.delenv("TILEDIFF_KERNELS_LN")
    monkeypatch.setattr(nb, "POISON_INTERMEDIATES", True)
    x, p, mods, cam = block_inputs((3, 48, 17, 9), torch.float32, "cl", seed=12)
    with torch.no_grad():
        one = nb.fused_nafblock_forward(x, p, mods, cam)
        monkeypatch.setenv("TILEDIFF_KERNELS_FFN", "0")
        assert not nb.fused_ffn(48)
        three = nb.fused_nafblock_forward(x, p, mods, cam)
    ref = nb.reference_nafblock_forward(x, p, mods, cam)
    check(one, ref, torch.float32, "ffn_fused block")
    check(three, ref, torch.float32, "three-launch block")


def test_dict_params_and_grad_fallback():
    x, p, mods, cam = block_inputs((1, 16, 7, 13), torch.float32, "nchw", seed=7)
    ref = nb.reference_nafblock_forward(x, p, mods, cam)
    with torch.no_grad():
        out = nb.fused_nafblock_forward(x, dict(vars(p)), dict(zip(
            ("shift_att", "scale_att", "shift_ffn", "scale_ffn"), mods)),
            {"cam_scale": cam[0], "cam_shift": cam[1]})
    check(out, ref, torch.float32, "dict arguments")
    xg = x.clone().requires_grad_(True)
    out = nb.fused_nafblock_forward(xg, p, mods, cam)       # autograd on: falls back to the reference
    out.sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()


def test_from_module_matches_network_block():
    models = pytest.importorskip("tilediff.models.nafnet")
    c = 16
    torch.manual_seed(0)
    try:
        block = models.NAFBlock(c, time_dim=32).to(DEVICE)
    except TypeError as exc:
        pytest.skip(f"NAFBlock constructor changed: {exc}")
    with torch.no_grad():
        for prm in block.parameters():
            prm.normal_(0, 0.3)
    p = nb.NAFBlockParams.from_module(block)
    x = torch.randn(2, c, 7, 13, device=DEVICE)
    t_emb = torch.randn(2, 32, device=DEVICE)
    with torch.no_grad():
        mods = block.modulations(t_emb)
        want = block(x, t_emb)
        got = nb.fused_nafblock_forward(x, p, mods[:4])
    check(got, want, torch.float32, "vs tilediff.models NAFBlock")


def test_kernels_available(monkeypatch):
    assert nb.kernels_available(DEVICE)
    monkeypatch.setenv("TILEDIFF_KERNELS", "0")
    assert not nb.kernels_available(DEVICE)


@pytest.mark.skipif(ON_CUDA, reason="on a GPU the sweep itself checks every candidate (rel_err); "
                                     "compiling them all here would double the compiled test time")
@pytest.mark.parametrize("c", [16, 128])
def test_gpu_bench_sweep_candidates(c, monkeypatch):
    """Every launch configuration benchmarks/gpu_bench.py --sweep may try (1-D and 2-D-tile
    depthwise kernels, GEMM, LayerNorm and SCA variants) computes the same launch output as the
    heuristic one, and the launches of block_launches chain into the fused block's result — so the
    GPU sweep cannot keep a wrong configuration or stop on one that fails to run.  c = 16 takes the
    LayerNorm-in-GEMM path, c = 128 the separate LayerNorm kernel."""
    from benchmarks import gpu_bench as gb
    monkeypatch.setattr(tk, "CONFIG_OVERRIDES", {})
    x, p, mods = gb.make_block(1, c, 9, 13, torch.float32, DEVICE, seed=1)
    pool = torch.zeros((1, c), device=DEVICE, dtype=torch.float32)
    with torch.no_grad():
        launches = gb.block_launches(x, p, mods, pool)
        out = [fn() for *_, fn in launches][-1]
        check(out, nb.reference_nafblock_forward(x, p, mods), torch.float32, "block_launches chain")
        groups = gb.sweep_groups(launches)
        assert {key[0] for _, key, *_ in groups} >= ({"gemm", "dw", "sca", "ffn"} if c <= 64 else {"gemm", "dw", "sca", "ln"})
        for name, key, default, candidates, fn in groups:
            if key[0] == "dw" and c > 16:
                continue   # the same candidates as at c = 16, and slow under the interpreter
            buf = fn()                      # each group writes into the same output buffer
            ref = buf.clone()
            for cand in candidates:
                cfg = dict(cand) if "TILE_W" in cand else dict(default, **cand)
                tk.CONFIG_OVERRIDES[key] = dict(cfg, num_stages=1) if "num_stages" in cfg else cfg
                buf.fill_(float("nan"))         # poisoned: an element left unwritten fails
                got = fn()
                assert got.data_ptr() == buf.data_ptr()
                assert torch.isfinite(got).all(), (name, cfg)
                check(got, ref, torch.float32, f"{name} {cfg}")
            tk.CONFIG_OVERRIDES.pop(key)


@pytest.mark.skipif(ON_CUDA, reason="on a GPU the defaults are what every other test runs")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("layout", ["nchw", "cl"])
@pytest.mark.parametrize("shape", [(2, 64, 5, 130), (1, 48, 9, 13)], ids=["wide", "narrow"])
def test_gpu_default_configs_under_interpreter(shape, layout, dtype, monkeypatch):
    """The launch configurations the heuristics choose on a GPU (not the interpreter's small ones:
    2-D depthwise tiles on NCHW, the LayerNorm GEMM's BLOCK_N 32, ffn_fused's tile) run the whole
    block right — forced here as overrides so CI checks them without a GPU."""
    B, c, H, W = shape
    contig = layout == "cl"
    monkeypatch.setattr(tk, "INTERPRET", False)
    cfgs = {("gemm", c, 2 * c, dtype, False, True, contig): tk._gemm_cfg(c, 2 * c, dtype, False, True, contig),
            ("dw", c, contig): tk._dw_cfg(c, contig, W),
            ("sca", c): tk._sca_cfg(c),
            ("ffn", c, dtype, contig): tk._ffn_cfg(c, dtype, contig)}
    monkeypatch.setattr(tk, "INTERPRET", True)
    assert ("TILE_W" in cfgs[("dw", c, contig)]) == (not contig)
    monkeypatch.setattr(tk, "CONFIG_OVERRIDES", cfgs)
    monkeypatch.setattr(nb, "POISON_INTERMEDIATES", True)
    x, p, mods, cam = block_inputs(shape, dtype, layout, seed=13)
    with torch.no_grad():
        out = nb.fused_nafblock_forward(x, p, mods, cam)
    check(out, nb.reference_nafblock_forward(x, p, mods, cam), dtype, f"GPU defaults {cfgs}")
