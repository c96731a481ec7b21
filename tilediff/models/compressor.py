"""The latent compressor of Refusion: a U-Net whose encoder keeps its full-resolution skips.

``encode(img) -> (latent, hidden)`` and ``decode(latent, hidden)`` as in the reference; restoration
encodes the degraded image, maps its latent with the diffusion model and decodes the result with the
degraded image's skips. Module names equal the reference's so its checkpoints load strictly.
Everything is local (3×3 convolutions) except the LinearAttention of the deepest level, whose
softmax over positions and k·v sum are global (see ``LinearAttention.reduce``/``apply``, which the
tiled engine uses to accumulate them over tiles).
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layers import LayerNorm


def conv3(dim_in, dim_out, kernel_size=3, bias=False):
    """The reference's default convolution: 'same' padding, no bias."""
    return nn.Conv2d(dim_in, dim_out, kernel_size, padding=kernel_size // 2, bias=bias)


def reflect_index(n, size):
    """Indices 0..n−1 mapped into 0..size−1 by repeated mirror reflection without repeating the
    edge: torch's 'reflect' padding where that is defined (padding < size), extended to any n."""
    if size == 1:
        return torch.zeros(n, dtype=torch.long)
    period = 2 * (size - 1)
    i = torch.arange(n) % period
    return torch.where(i < size, i, period - i)


class Block(nn.Module):
    def __init__(self, dim_in, dim_out):
        super().__init__()
        self.proj = conv3(dim_in, dim_out)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.proj(x))


class ResBlock(nn.Module):
    """conv → SiLU → conv → SiLU plus a residual (1×1 conv when the channel count changes)."""

    def __init__(self, dim_in, dim_out):
        super().__init__()
        self.block1 = Block(dim_in, dim_out)
        self.block2 = Block(dim_out, dim_out)
        self.res_conv = conv3(dim_in, dim_out, 1) if dim_in != dim_out else nn.Identity()

    def forward(self, x):
        return self.block2(self.block1(x)) + self.res_conv(x)


class LinearAttention(nn.Module):
    """Linear attention over all positions (4 heads × 32). Global: k is softmaxed over positions.

    Split in two so that the global part can be accumulated over tiles:
    ``reduce`` gives, for a map or a tile of it, the per-head max of k, Σ exp(k − max) and
    Σ exp(k − max)·vᵀ; ``merge`` combines such partial sums; ``apply`` turns the merged sums and the
    local q of any tile into the output. On a whole map ``forward`` = apply(reduce(map)).
    """

    def __init__(self, dim, heads=4, dim_head=32):
        super().__init__()
        self.scale = dim_head ** -0.5
        self.heads = heads
        hidden = dim_head * heads
        self.to_qkv = nn.Conv2d(dim, hidden * 3, 1, bias=False)
        self.to_out = nn.Sequential(nn.Conv2d(hidden, dim, 1), LayerNorm(dim))

    def _split(self, x):
        b, _, h, w = x.shape
        q, k, v = self.to_qkv(x).chunk(3, dim=1)
        return [t.reshape(b, self.heads, -1, h * w) for t in (q, k, v)]

    def reduce(self, x):
        """Partial sums over the positions of x: (k_max, Σ e^(k−max), Σ e^(k−max) vᵀ, count), the sums
        in float32: they grow with the number of positions (Σ e reaches n), past float16's 65504 on
        maps of 256 × 256 and more."""
        _, k, v = self._split(x)
        k_max = k.amax(dim=-1, keepdim=True)
        e = torch.exp(k.float() - k_max.float())
        return (k_max.float(), e.sum(dim=-1, keepdim=True), torch.einsum("bhdn,bhen->bhde", e, v.float()),
                x.shape[-2] * x.shape[-1])

    @staticmethod
    def merge(parts):
        """Combine partial sums of disjoint position sets (log-sum-exp rescaling)."""
        k_max = torch.stack([p[0] for p in parts]).amax(dim=0)
        denom, kv, count = 0, 0, 0
        for p_max, p_denom, p_kv, p_count in parts:
            scale = torch.exp(p_max - k_max)
            denom = denom + p_denom * scale
            kv = kv + p_kv * scale
            count += p_count
        return k_max, denom, kv, count

    def apply(self, x, sums):
        """Output for the positions of x given the merged sums over the whole map."""
        b, _, h, w = x.shape
        q, _, _ = self._split(x)
        _, denom, kv, count = sums
        # softmax(k) · (v / n) summed over positions, and its product with q, in float32: the context
        # is ~1/n (below float16's normal range on large maps); the result goes back to x's dtype
        context = kv.float() / denom.float() / count
        q = q.float().softmax(dim=-2) * self.scale
        out = torch.einsum("bhde,bhdn->bhen", context, q).reshape(b, -1, h, w).to(x.dtype)
        return self.to_out(out)

    def forward(self, x):
        return self.apply(x, self.reduce(x))


class PreNorm(nn.Module):
    def __init__(self, dim, fn):
        super().__init__()
        self.fn = fn
        self.norm = LayerNorm(dim)

    def forward(self, x):
        return self.fn(self.norm(x))


class Residual(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x) + x


class Upsample(nn.Sequential):
    """Nearest ×2 then a 3×3 conv (with bias)."""

    def __init__(self, dim_in, dim_out):
        super().__init__(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(dim_in, dim_out, 3, 1, 1))


class Skips(list):
    """The encoder's kept features; remembers the input size so that decode can crop back to it."""

    image_size = None


@dataclass(frozen=True)
class CompressorFacts:
    """What the engine's planner needs to know about a ``Compressor``, declared by the network.

    Levels are numbered as in the encoder: level ℓ runs at 1/2^ℓ of the padded image, the deepest
    (``depth`` − 1) at 1/``scale``, the latent's size.
    """

    depth: int                  # U-Net levels (len(ch_mult)); the deepest does not downsample
    scale: int                  # image pixels per latent pixel: 2^(depth−1)
    multiple: int               # inputs are reflect-padded to a multiple of this: 2^depth
    latent_channels: int        # channels of the latent (embed_dim)
    skips: tuple                # the skips encode() keeps, in its order: (level, channels) each
    level_channels: tuple       # per level, the channels the encoder's ResBlocks run at (its input)
    decoder_channels: tuple     # per level, the channels of the decoder's output at that level
    deepest_channels: int       # channels of the deepest level's canvases (around the attention)
    finest_decoder_in_channels: int   # input channels of the finest decoder ResBlock (up + skip)


class Compressor(nn.Module):
    """U-Net compressor (the reference's ``UNet``): ch_mult levels, the last without downsampling."""

    def __init__(self, in_ch=3, out_ch=3, ch=64, ch_mult=(1, 2, 4, 4), embed_dim=4):
        super().__init__()
        self.depth = len(ch_mult)
        self.init_conv = conv3(in_ch, ch)
        self.encoder = nn.ModuleList()
        self.decoder = nn.ModuleList()
        mults = [1] + list(ch_mult)
        for i in range(self.depth):
            dim_in, dim_out = ch * mults[i], ch * mults[i + 1]
            last = i == self.depth - 1
            self.encoder.append(nn.ModuleList([
                ResBlock(dim_in, dim_in),
                ResBlock(dim_in, dim_in),
                Residual(PreNorm(dim_in, LinearAttention(dim_in))) if last else nn.Identity(),
                conv3(dim_in, dim_out) if last else nn.Conv2d(dim_in, dim_out, 4, 2, 1),
            ]))
            self.decoder.insert(0, nn.ModuleList([
                ResBlock(dim_out + dim_in, dim_out),
                ResBlock(dim_out + dim_in, dim_out),
                Residual(PreNorm(dim_out, LinearAttention(dim_out))) if last else nn.Identity(),
                Upsample(dim_out, dim_in) if i != 0 else conv3(dim_out, dim_in),
            ]))
        mid = ch * mults[-1]
        self.latent_conv = conv3(mid, embed_dim, 1)
        self.post_latent_conv = conv3(embed_dim, mid, 1)
        self.final_conv = nn.Conv2d(ch, out_ch, 3, 1, 1)

    @property
    def multiple(self):
        """Inputs are reflect-padded to a multiple of this (2^depth)."""
        return 2 ** self.depth

    @property
    def scale(self):
        """Latent downscale factor (2^(depth−1): the last level does not downsample)."""
        return 2 ** (self.depth - 1)

    @property
    def memory_facts(self):
        """The facts the engine plans its memory with (``CompressorFacts``), read off the layers."""
        skips = [(0, self.init_conv.out_channels)]
        for level, blocks in enumerate(self.encoder):
            skips += [(level, blocks[0].block1.proj.out_channels)] * 2   # the two ResBlocks' outputs
        return CompressorFacts(
            depth=self.depth, scale=self.scale, multiple=self.multiple,
            latent_channels=self.latent_conv.out_channels,
            skips=tuple(skips),
            level_channels=tuple(blocks[0].block1.proj.in_channels for blocks in self.encoder),
            decoder_channels=tuple(self.decoder[self.depth - 1 - level][1].block2.proj.out_channels
                                   for level in range(self.depth)),
            deepest_channels=self.decoder[0][0].block1.proj.out_channels,
            finest_decoder_in_channels=self.decoder[-1][0].block1.proj.in_channels)

    def pad(self, x):
        """Reflect-pad right/bottom to a multiple of 2^depth (the reference's padding). Images
        smaller than the padding, where torch's reflect is undefined, keep mirroring (see
        ``reflect_index``) instead of failing."""
        m = self.multiple
        h, w = x.shape[-2:]
        ph, pw = (m - h % m) % m, (m - w % m) % m
        if ph < h and pw < w:
            return F.pad(x, (0, pw, 0, ph), mode="reflect")
        return x[:, :, reflect_index(h + ph, h)][:, :, :, reflect_index(w + pw, w)]

    def encode(self, x):
        hidden = Skips()
        hidden.image_size = tuple(x.shape[-2:])
        x = self.init_conv(self.pad(x))
        hidden.append(x)
        for block1, block2, attn, down in self.encoder:
            x = block1(x)
            hidden.append(x)
            x = attn(block2(x))
            hidden.append(x)
            x = down(x)
        return self.latent_conv(x), hidden

    def decode(self, latent, hidden, size=None):
        """Decode with the skips of an encode; crops to ``size`` or to the encoded image's size."""
        x = self.post_latent_conv(latent)
        for i, (block1, block2, attn, up) in enumerate(self.decoder):
            x = block1(torch.cat([x, hidden[-(2 * i + 1)]], dim=1))
            x = block2(torch.cat([x, hidden[-(2 * i + 2)]], dim=1))
            x = up(attn(x))
        x = self.final_conv(x + hidden[0])
        size = size or getattr(hidden, "image_size", None)
        return x if size is None else x[..., : size[0], : size[1]]

    def forward(self, x):
        return self.decode(*self.encode(x))
