"""The conditional NAFNet noise network of Refusion, in the reference's four variants.

Variants (REFUSION.md): ``pixel`` ends with ending(x); ``latent`` with ending(x + intro output);
``bokeh`` adds lens conditioning (and its time MLP has no embedding inside, so its keys shift);
``stereo`` ends every block with a stereo cross-attention (SCAM) between the left and right views.
Constructor arguments and state-dict keys are the reference's, so its checkpoints load strictly.
"""
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layers import LayerNorm, SimpleGate, SinusoidalPosEmb, as_batch_vector, channel_variance

VARIANTS = ("pixel", "latent", "bokeh", "stereo")
PREDICTIONS = ("eps", "x0")    # what the last layer's output means (ConditionalNAFNet's docstring)


def use_fused_kernels(x):
    """Whether a NAFBlock should run the fused Triton path on this input.

    On CUDA by default (``TILEDIFF_KERNELS=0`` turns it off); on CPU only when asked for with
    ``TILEDIFF_KERNELS=1`` and the kernels were built for the Triton interpreter (tests). Never while
    autograd records, since the fused path has no backward.
    """
    setting = os.environ.get("TILEDIFF_KERNELS", "auto").strip()
    if setting == "0" or (x.device.type != "cuda" and setting != "1"):
        return False
    if torch.is_grad_enabled() and x.requires_grad:
        return False
    from tilediff.kernels.nafblock import kernels_available
    return kernels_available(x.device)


class SCAM(nn.Module):
    """Stereo cross-attention between left and right views (stacked along the batch), at 1/4 scale."""

    def __init__(self, c):
        super().__init__()
        self.scale = c ** -0.5
        self.norm_l = LayerNorm(c)
        self.norm_r = LayerNorm(c)
        self.l_proj1 = nn.Conv2d(c, c, 1)
        self.r_proj1 = nn.Conv2d(c, c, 1)
        self.beta = nn.Parameter(torch.zeros((1, c, 1, 1)))
        self.gamma = nn.Parameter(torch.zeros((1, c, 1, 1)))
        self.l_proj2 = nn.Conv2d(c, c, 1)
        self.r_proj2 = nn.Conv2d(c, c, 1)

    def forward(self, x):
        left, right = x.chunk(2, dim=0)
        small_l = F.interpolate(left, scale_factor=0.25, mode="bicubic")
        small_r = F.interpolate(right, scale_factor=0.25, mode="bicubic")
        q_l = self.l_proj1(self.norm_l(small_l)).permute(0, 2, 3, 1)      # B H W c
        q_r_t = self.r_proj1(self.norm_r(small_r)).permute(0, 2, 1, 3)    # B H c W
        v_l = self.l_proj2(small_l).permute(0, 2, 3, 1)
        v_r = self.r_proj2(small_r).permute(0, 2, 3, 1)
        attention = torch.matmul(q_l, q_r_t) * self.scale                 # B H W W
        r2l = torch.matmul(torch.softmax(attention, dim=-1), v_r)
        l2r = torch.matmul(torch.softmax(attention.permute(0, 1, 3, 2), dim=-1), v_l)
        r2l = F.interpolate(r2l.permute(0, 3, 1, 2) * self.beta, size=left.shape[2:])
        l2r = F.interpolate(l2r.permute(0, 3, 1, 2) * self.gamma, size=right.shape[2:])
        return torch.cat([left + r2l, right + l2r], dim=0).contiguous()


class NAFBlock(nn.Module):
    """NAFNet block with time modulation of both branches (and lens modulation for bokeh)."""

    def __init__(self, c, time_dim, variant="pixel"):
        super().__init__()
        self.variant = variant
        mlp = nn.Sequential(SimpleGate(), nn.Linear(time_dim // 2, c * 4))
        if variant == "bokeh":
            self.time_mlp = mlp
            self.cam_mlp = nn.Sequential(SimpleGate(), nn.Linear(time_dim // 2, c * 2))
        else:
            self.mlp = mlp
        self.conv1 = nn.Conv2d(c, 2 * c, 1)
        self.conv2 = nn.Conv2d(2 * c, 2 * c, 3, padding=1, groups=2 * c)
        self.conv3 = nn.Conv2d(c, c, 1)
        self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c, 1))
        self.sg = SimpleGate()
        self.conv4 = nn.Conv2d(c, 2 * c, 1)
        self.conv5 = nn.Conv2d(c, c, 1)
        self.norm1 = LayerNorm(c)
        self.norm2 = LayerNorm(c)
        self.beta = nn.Parameter(torch.zeros((1, c, 1, 1)))
        self.gamma = nn.Parameter(torch.zeros((1, c, 1, 1)))
        if variant == "stereo":
            self.fusion = SCAM(c)

    def modulations(self, t_emb, cam_emb=None):
        """Per-sample (shift_att, scale_att, shift_ffn, scale_ffn[, cam_scale, cam_shift]), each (B,c,1,1)."""
        time_mlp = self.time_mlp if self.variant == "bokeh" else self.mlp
        mods = time_mlp(t_emb)[:, :, None, None].chunk(4, dim=1)
        if self.variant == "bokeh":
            mods = mods + self.cam_mlp(cam_emb)[:, :, None, None].chunk(2, dim=1)
        return mods

    def forward(self, inp, t_emb, cam_emb=None):
        shift_att, scale_att, shift_ffn, scale_ffn, *cam = self.modulations(t_emb, cam_emb)
        if use_fused_kernels(inp):
            from tilediff.kernels.nafblock import NAFBlockParams, fused_nafblock_forward
            x = fused_nafblock_forward(inp, NAFBlockParams.from_module(self),
                                       (shift_att, scale_att, shift_ffn, scale_ffn), tuple(cam) or None)
            return self.fusion(x) if self.variant == "stereo" else x
        if not torch.is_grad_enabled():
            return self._forward_in_place(inp, shift_att, scale_att, shift_ffn, scale_ffn, cam)
        x = self.norm1(inp)
        x = x * (scale_att + 1) + shift_att
        x = self.sg(self.conv2(self.conv1(x)))
        x = x * self.sca(x)
        y = inp + self.conv3(x) * self.beta
        x = self.norm2(y)
        x = x * (scale_ffn + 1) + shift_ffn
        x = self.sg(self.conv4(x))
        if cam:
            cam_scale, cam_shift = cam
            x = x * (cam_scale + 1) + cam_shift
        x = y + self.conv5(x) * self.gamma
        if self.variant == "stereo":
            x = self.fusion(x)
        return x

    def _forward_in_place(self, inp, shift_att, scale_att, shift_ffn, scale_ffn, cam):
        """``forward`` without autograd: the same operations in the same order (the same numbers,
        bit for bit), the modulations, gates and residual sums in place and each temporary let go
        as soon as it is used. The official network's whole-canvas forward at 2000×3000 (a 250×376
        latent, 1 thread, mmapped blocks): +196 MiB resident at its peak instead of +226–246, 2.8 s
        instead of 3.1–3.4. Large maps on the CPU go through ``_forward_in_strips`` (``strip_rows``):
        with it that run's sample stage peaked at 0.75 GiB instead of 0.83 (2 threads, process total)."""
        rows = strip_rows(inp, 2 * inp.shape[1])
        if rows < inp.shape[2]:
            return self._forward_in_strips(inp, shift_att, scale_att, shift_ffn, scale_ffn, cam, rows)
        x = self.sg(self._expand(inp, shift_att, scale_att))
        x = x.mul_(self.sca(x))
        y = self.conv3(x)
        del x
        y = y.mul_(self.beta).add_(inp)          # inp + conv3(x)·β
        self._add_ffn(y, shift_ffn, scale_ffn, cam)
        return self.fusion(y) if self.variant == "stereo" else y

    def _forward_in_strips(self, inp, shift_att, scale_att, shift_ffn, scale_ffn, cam, rows):
        """``_forward_in_place`` on a large map, ``rows`` rows at a time: every operation but the
        depthwise 3×3 convolution (one row of halo) and SCA's global mean is per pixel, so the block
        holds its input, one map of its width and a strip's temporaries, where the whole-map path
        holds two maps of twice the width at once (the conv1 and conv2 outputs). The same numbers to
        float rounding (the strips' convolutions may block their sums differently)."""
        h = inp.shape[2]
        strips = [(r0, min(h, r0 + rows)) for r0 in range(0, h, rows)]
        x = torch.empty_like(inp)
        for r0, r1 in strips:             # x = sg(conv2(conv1(norm1(inp)·(1 + scale) + shift)))
            lo, hi = max(0, r0 - 1), min(h, r1 + 1)
            t = self._expand(inp[:, :, lo:hi], shift_att, scale_att)[:, :, r0 - lo:r1 - lo]   # rows with both neighbours, or the image's edge
            a, b = t.chunk(2, dim=1)
            torch.mul(a, b, out=x[:, :, r0:r1])
            del t, a, b
        x = x.mul_(self.sca(x))
        for r0, r1 in strips:             # y = inp + conv3(x)·β, over x's rows as they are used
            y = self.conv3(x[:, :, r0:r1]).mul_(self.beta)
            torch.add(y, inp[:, :, r0:r1], out=x[:, :, r0:r1])
        y = x
        for r0, r1 in strips:
            self._add_ffn(y[:, :, r0:r1], shift_ffn, scale_ffn, cam)
        return self.fusion(y) if self.variant == "stereo" else y

    def _expand(self, x, shift_att, scale_att):
        """conv2(conv1(norm1(x)·(1 + scale) + shift)), the attention branch before its gate; each
        temporary let go once the next is made."""
        t = _layer_norm_in_place(self.norm1, x).mul_(scale_att + 1).add_(shift_att)
        t = self.conv1(t)
        return self.conv2(t)

    def _add_ffn(self, y, shift_ffn, scale_ffn, cam):
        """y += conv5(sg(conv4(norm2(y)·(1 + scale) + shift)))·γ in place (every op per pixel, so y
        may be a map or a strip of its rows)."""
        t = _layer_norm_in_place(self.norm2, y).mul_(scale_ffn + 1).add_(shift_ffn)
        t = self.sg(self.conv4(t))
        if cam:
            cam_scale, cam_shift = cam
            t = t.mul_(cam_scale + 1).add_(cam_shift)
        y.add_(self.conv5(t).mul_(self.gamma))


# The in-place NAFBlock runs a map in strips of rows where its twice-as-wide conv1 output would be
# larger than twice this (on the CPU; the fused CUDA kernels have their own tiling); a strip's
# temporaries are then at most this size, which the sampler's heap reuses (engine.stages.SAMPLE_HEAP_BLOCK).
STRIP_BYTES = 4 << 20


def strip_rows(x, channels):
    """Rows per strip for a map like x whose widest temporary has ``channels`` channels: all of
    them on a GPU or where that temporary is at most 2 × ``STRIP_BYTES``."""
    b, _, h, w = x.shape
    row_bytes = b * channels * w * x.element_size()
    if x.device.type != "cpu" or row_bytes * h <= 2 * STRIP_BYTES:
        return h
    return max(1, STRIP_BYTES // row_bytes - 2)      # with its two rows of halo, within STRIP_BYTES


def _layer_norm_in_place(norm, x):
    """``norm(x)`` (a ``layers.LayerNorm``) in one new tensor: (x − mean) · rsqrt(var + eps) · g."""
    eps = 1e-5 if x.dtype == torch.float32 else 1e-3
    out = x - torch.mean(x, dim=1, keepdim=True)
    return out.mul_(channel_variance(out).add_(eps).rsqrt_()).mul_(norm.g)


@dataclass(frozen=True)
class NoiseNetFacts:
    """What the engine's planner needs to know about a ``ConditionalNAFNet``, declared by the network."""

    width: int          # channels of the first (finest) level; the activations scale with it
    views: int          # images per input: 2 for stereo (left and right run as one batch), else 1
    padder_size: int    # inputs are zero-padded to a multiple of this: 2^(encoder levels)


class ConditionalNAFNet(nn.Module):
    """Noise network ε(x_t, μ, t): input cat(x_t − μ, μ), output ε with the channels of x_t.

    The arguments up to ``dec_blk_nums`` are the reference constructor's; ``variant`` picks the
    reference file the network comes from. For ``stereo`` the inputs hold the left view's channels
    then the right view's (2·img_channel channels); for ``bokeh`` forward also takes the lens numbers.

    ``prediction`` says what the last layer's output F is. ``"eps"`` (the reference): F = ε. With ε
    the one-shot x̂_0 = μ + (y − σ̄_t ε)/m_t (y = x_t − μ, m_t = e^{−θ̄_t dt}) multiplies F's errors by
    σ̄_t/m_t, 24× at t = T for λ = 0.118: a run from noise cannot get its first, deciding estimates
    right (session 13, model card). ``"x0"``: F is preconditioned as in Karras et al. 2022 (EDM),
    with the IR-SDE's y_t = m_t·y_0 + σ̄_t·z and ``sigma_data`` s the spread of y_0 = x_0 − μ:
    ŷ_0 = c_skip·y − c_out·F, c_skip = m s²/D, c_out = s σ̄/√D, D = m²s² + σ̄², so F's target has unit
    spread at every step, an F error costs at most s in x̂_0, and at small t F ≈ ε (an ε network is a
    good start for it). forward still returns ε = (y − m ŷ_0)/σ̄ = y σ̄/D + F m s/√D (no cancellation),
    so samplers, tiling and the engine are unchanged; ``set_schedule`` gives it m_t and σ̄_t.
    """

    def __init__(self, img_channel=3, width=16, middle_blk_num=1, enc_blk_nums=(), dec_blk_nums=(),
                 upscale=1, variant="pixel", prediction="eps", sigma_data=None):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown NAFNet variant {variant!r}; expected one of {VARIANTS}")
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; expected one of {PREDICTIONS}")
        if prediction == "x0" and not (isinstance(sigma_data, (int, float)) and sigma_data > 0):
            raise ValueError(f"prediction 'x0' needs sigma_data > 0, got {sigma_data!r}")
        self.prediction = prediction
        self.sigma_data = float(sigma_data) if prediction == "x0" else None
        self.register_buffer("_signal", None, persistent=False)   # m_t and σ̄_t per step (x0 only):
        self.register_buffer("_noise", None, persistent=False)    # set_schedule; not in the state dict
        if len(enc_blk_nums) != len(dec_blk_nums):
            raise ValueError("enc_blk_nums and dec_blk_nums must have the same length")
        self.variant = variant
        self.img_channel = img_channel
        self.upscale = upscale
        time_dim = width * 4
        self.pos_emb = SinusoidalPosEmb(width)  # holds no parameters
        if variant == "bokeh":
            self.time_mlp = nn.Sequential(nn.Linear(width, time_dim * 2), SimpleGate(),
                                          nn.Linear(time_dim, time_dim))
            self.cam_mlp = nn.Sequential(nn.Linear(width * 3, time_dim * 2), SimpleGate(),
                                         nn.Linear(time_dim, time_dim))
        else:
            self.time_mlp = nn.Sequential(SinusoidalPosEmb(width), nn.Linear(width, time_dim * 2),
                                          SimpleGate(), nn.Linear(time_dim, time_dim))
        self.intro = nn.Conv2d(img_channel * 2, width, 3, padding=1)
        self.ending = nn.Conv2d(width, img_channel, 3, padding=1)

        self.encoders, self.downs = nn.ModuleList(), nn.ModuleList()
        self.ups, self.decoders = nn.ModuleList(), nn.ModuleList()
        chan = width
        for num in enc_blk_nums:
            self.encoders.append(nn.Sequential(*[NAFBlock(chan, time_dim, variant) for _ in range(num)]))
            self.downs.append(nn.Conv2d(chan, 2 * chan, 2, 2))
            chan *= 2
        self.middle_blks = nn.Sequential(*[NAFBlock(chan, time_dim, variant) for _ in range(middle_blk_num)])
        for num in dec_blk_nums:
            self.ups.append(nn.Sequential(nn.Conv2d(chan, chan * 2, 1, bias=False), nn.PixelShuffle(2)))
            chan //= 2
            self.decoders.append(nn.Sequential(*[NAFBlock(chan, time_dim, variant) for _ in range(num)]))
        self.padder_size = 2 ** len(self.encoders)

    @property
    def memory_facts(self):
        """The facts the engine plans its memory with (``NoiseNetFacts``)."""
        return NoiseNetFacts(width=self.intro.out_channels, views=2 if self.variant == "stereo" else 1,
                             padder_size=self.padder_size)

    def embed(self, t, batch, device, src_lens=None, tgt_lens=None, disparity=None):
        """Time embedding (and lens embedding for bokeh) for a batch: the per-step constants."""
        t = as_batch_vector(t, batch, device)
        dtype = self.intro.weight.dtype
        if self.variant != "bokeh":
            if dtype != torch.float32:   # embedding in fp32, then the Linear layers' dtype
                return self.time_mlp[1:](self.time_mlp[0](t).to(dtype)), None
            return self.time_mlp(t), None
        if src_lens is None or tgt_lens is None or disparity is None:
            raise ValueError("the bokeh network needs src_lens, tgt_lens and disparity")
        lens = [self.pos_emb(as_batch_vector(v, batch, device)) for v in (src_lens, tgt_lens, disparity)]
        return self.time_mlp(self.pos_emb(t).to(dtype)), self.cam_mlp(torch.cat(lens, dim=1).to(dtype))

    def forward(self, x, cond, t, src_lens=None, tgt_lens=None, disparity=None):
        step = t
        if self.variant == "stereo":
            xl, xr = x.chunk(2, dim=1)
            cl, cr = cond.chunk(2, dim=1)
            feats = torch.cat([torch.cat([xl - cl, cl], 1), torch.cat([xr - cr, cr], 1)], dim=0)
            t = as_batch_vector(t, x.shape[0], x.device).repeat(2)
        else:
            feats = torch.cat([x - cond, cond], dim=1)
        t_emb, cam_emb = self.embed(t, feats.shape[0], x.device, src_lens, tgt_lens, disparity)
        out = self.body(feats, t_emb, cam_emb)
        if self.variant == "stereo":
            left, right = out.chunk(2, dim=0)
            out = torch.cat([left, right], dim=1)
        if self.prediction == "x0":
            return self._eps_from_output(out, x - cond, step)
        return out

    def set_schedule(self, signal, noise):
        """m_t and σ̄_t for t = 0..T (the model file's schedule): what an x0-predicting network turns
        its output into ε with. Buffers outside the state dict: the file's tensors are the same."""
        device = self.intro.weight.device
        self._signal = torch.as_tensor(signal, dtype=torch.float32, device=device)
        self._noise = torch.as_tensor(noise, dtype=torch.float32, device=device)

    def _eps_from_output(self, out, y, t):
        """ε = y σ̄/D + F m s/√D (class docstring), in float32 whatever the network's dtype: the x̂_0 a
        sampler takes back from it, (y − σ̄ε)/m, subtracts nearly equal terms at large t."""
        if self._signal is None:
            raise RuntimeError("an x0-predicting noise network needs set_schedule(m_t, σ̄_t) before it runs")
        steps = as_batch_vector(t, out.shape[0], out.device).round().long()
        m = self._signal.float()[steps].view(-1, 1, 1, 1)
        sb = self._noise.float()[steps].view(-1, 1, 1, 1)
        s = self.sigma_data
        d = m * m * (s * s) + sb * sb
        return y.float() * (sb / d) + out.float() * (m * s / d.sqrt())

    def body(self, feats, t_emb, cam_emb=None):
        """The U-Net on already concatenated features; pads to a multiple of 2^depth and crops back."""
        h, w = feats.shape[-2:]
        pad_h = (self.padder_size - h % self.padder_size) % self.padder_size
        pad_w = (self.padder_size - w % self.padder_size) % self.padder_size
        if self.variant == "stereo":
            # SCAM works at 1/4 of each level: the deepest level needs 4 pixels (the reference fails
            # below that); pad small inputs up to it, which leaves every size the reference runs alone.
            least = 4 * self.padder_size
            pad_h, pad_w = max(pad_h, least - h), max(pad_w, least - w)
        x = self.intro(F.pad(feats, (0, pad_w, 0, pad_h)))
        intro_out = x
        skips = []
        for encoder, down in zip(self.encoders, self.downs):
            for block in encoder:
                x = block(x, t_emb, cam_emb)
            skips.append(x)
            x = down(x)
        for block in self.middle_blks:
            x = block(x, t_emb, cam_emb)
        for decoder, up, skip in zip(self.decoders, self.ups, reversed(skips)):
            x = up(x) + skip
            for block in decoder:
                x = block(x, t_emb, cam_emb)
        if self.variant == "latent":
            x = x + intro_out
        return self.ending(x)[..., :h, :w]
