"""The compressor over tiles, exact: the tiled result equals the whole-image result to float rounding.

The compressor is local (3×3 convolutions, stride-2 downsampling, nearest upsampling) except the
LinearAttention on its deepest level, in the encoder and in the decoder. So the work is cut at those
two global layers, and each local part runs over tiles with a halo computed from its receptive field:

encode
  1. local: image → every skip up to the deepest level's second ResBlock (one fused pass per tile);
  2. global: the encoder attention, its softmax/k·v sums accumulated over all tiles, then applied;
  3. local: the deepest downsample conv and latent_conv → the latent canvas.
decode
  4. local: post_latent_conv and the deepest level's ResBlocks (with the deepest skips);
  5. global: the decoder attention, accumulated then applied, as in 2;
  6. local: the rest of the decoder up to final_conv (one fused pass per tile, reading the skips of
     its region: kept on the host, or recomputed from the image by step 1's local encoder).

Tiles are cut on the deepest level's grid (units of 2^(depth−1) pixels), so every level's region
starts on its own stride grid, and regions are clipped at the canvas edges, where each convolution's
own zero padding is then the whole-image padding. Interior halos are cropped away after the pass.
"""
import math
from dataclasses import dataclass

import torch

from .models.compressor import reflect_index
from .tiling import partition


def padded_region(image, region, padded_hw):
    """The region of the reflect-padded image (padding right/bottom to ``padded_hw``) as a tensor."""
    _, _, h, w = image.shape
    rows = reflect_index(padded_hw[0], h)[region.y0:region.y1]
    cols = reflect_index(padded_hw[1], w)[region.x0:region.x1]
    if region.y1 <= h and region.x1 <= w:
        return image[:, :, region.y0:region.y1, region.x0:region.x1]
    return image[:, :, rows][:, :, :, cols]


def encoder_halo(depth):
    """Contaminated border width (deepest-level units) of the fused local encoder pass, plus margin."""
    c = 1                           # init_conv
    for level in range(depth):
        c += 4                      # two ResBlocks of two 3×3 convs
        if level < depth - 1:
            c = (c + 2) // 2 + 1    # 4×4 stride-2 conv
    return c + 1


def decoder_halo(depth):
    """Contaminated border width (deepest-level units) of the fused local decoder tail, plus margin."""
    c = 0
    for k in range(depth):
        if k > 0:
            c += 4                  # two ResBlocks
        c = 2 * c + 1 if k < depth - 1 else c + 1   # upsample (nearest ×2, 3×3 conv) or last 3×3 conv
    c += 1                          # final_conv
    return math.ceil(c / 2 ** (depth - 1)) + 1


@dataclass
class Canvas:
    """Where the tiled compressor keeps its state between stages (host tensors)."""

    image_hw: tuple
    padded_hw: tuple
    latent: torch.Tensor = None
    skips: list = None             # hidden[0..], None where recomputed
    skip_dtype: torch.dtype = torch.float32


class TiledCompressor:
    """Runs a ``Compressor`` over tiles of a host canvas on ``device`` in ``dtype``."""

    def __init__(self, compressor, device, dtype=torch.float32, tile=32, keep_skips=True,
                 skip_dtype=torch.float32, progress=None):
        self.net = compressor
        self.device = device
        self.dtype = dtype
        self.tile = max(1, int(tile))            # in deepest-level units
        self.keep_skips = keep_skips
        self.skip_dtype = skip_dtype
        self.progress = progress
        self.depth = compressor.depth
        self.unit = 2 ** (compressor.depth - 1)  # pixels per deepest-level unit
        self.enc_halo = encoder_halo(self.depth)
        self.dec_halo = decoder_halo(self.depth)

    # ---- helpers ----------------------------------------------------------------------------
    def _dev(self, x):
        return x.to(device=self.device, dtype=self.dtype)

    def _host(self, x, dtype=torch.float32):
        return x.to(device="cpu", dtype=dtype)

    def _report(self, stage, done, total):
        if self.progress is not None:
            self.progress(stage, done, total)

    def _level_scale(self, level):
        """Pixels of ``level`` per deepest-level unit."""
        return 2 ** (self.depth - 1 - level)

    def _deep_hw(self, canvas):
        return canvas.padded_hw[0] // self.unit, canvas.padded_hw[1] // self.unit

    def _local_encoder(self, image, canvas, region, levels):
        """Run init_conv and the ResBlocks/downsamples of ``levels`` levels on an image region
        (deepest units); returns the hidden list for that region (and the last block2 output)."""
        x = self._dev(padded_region(image, region.scaled(self.unit), canvas.padded_hw))
        x = self.net.init_conv(x)
        hidden = [x]
        for level, (block1, block2, _, down) in enumerate(self.net.encoder[:levels]):
            x = block1(x)
            hidden.append(x)
            x = block2(x)
            hidden.append(x)
            if level < self.depth - 1:
                x = down(x)
        return hidden

    @staticmethod
    def _level_of(index):
        """The encoder level a hidden index belongs to (hidden[0] is the init conv, level 0)."""
        return max(0, (index - 1) // 2)

    def _crop(self, tensor, level, core, region):
        """Cut the ``core`` tile (deepest units) out of a tensor holding ``region`` at ``level``."""
        s = self._level_scale(level)
        ys, xs = core.scaled(s).relative_to(region.scaled(s))
        return tensor[:, :, ys, xs]

    # ---- global attention over a canvas ---------------------------------------------------------
    def _attention(self, residual, canvas_tensor, stage):
        """canvas + attention(norm(canvas)) with the global sums accumulated over tiles."""
        prenorm = residual.fn
        attn = prenorm.fn
        h, w = canvas_tensor.shape[-2:]
        tiles = partition(h, w, max(self.tile, 64))  # no halo needed: per-pixel apply
        parts = []
        for i, t in enumerate(tiles):
            x = self._dev(canvas_tensor[:, :, t.y0:t.y1, t.x0:t.x1])
            parts.append(tuple(p.float() if torch.is_tensor(p) else p for p in attn.reduce(prenorm.norm(x))))
            self._report(stage, i + 1, 2 * len(tiles))
        sums = attn.merge(parts)
        sums = tuple(self._dev(p) if torch.is_tensor(p) else p for p in sums)
        out = torch.empty_like(canvas_tensor)
        for i, t in enumerate(tiles):
            x = self._dev(canvas_tensor[:, :, t.y0:t.y1, t.x0:t.x1])
            out[:, :, t.y0:t.y1, t.x0:t.x1] = self._host(attn.apply(prenorm.norm(x), sums) + x, out.dtype)
            self._report(stage, len(tiles) + i + 1, 2 * len(tiles))
        return out

    def _local_at_deepest(self, fn, inputs, halo, stage):
        """Apply a local function of deepest-level canvases over tiles with a halo."""
        h, w = inputs[0].shape[-2:]
        out = None
        tiles = partition(h, w, self.tile)
        for i, core in enumerate(tiles):
            region = core.grow(halo, h, w)
            y = fn(*[self._dev(t[:, :, region.y0:region.y1, region.x0:region.x1]) for t in inputs])
            if out is None:
                out = torch.empty(1, y.shape[1], h, w)
            ys, xs = core.relative_to(region)
            out[:, :, core.y0:core.y1, core.x0:core.x1] = self._host(y[:, :, ys, xs])
            self._report(stage, i + 1, len(tiles))
        return out

    # ---- encode -----------------------------------------------------------------------------
    def encode(self, image):
        """image (1, C, H, W) on the host → Canvas with the latent and (kept) skips."""
        _, _, h, w = image.shape
        m = self.net.multiple
        canvas = Canvas((h, w), (h + (m - h % m) % m, w + (m - w % m) % m), skip_dtype=self.skip_dtype)
        dh, dw = self._deep_hw(canvas)
        n_hidden = 1 + 2 * self.depth
        shapes = self._hidden_shapes(canvas)
        keep = [self.keep_skips or self._level_of(i) == self.depth - 1 for i in range(n_hidden)]
        skips = [torch.empty(s, dtype=self.skip_dtype if k else torch.float32) if k else None
                 for s, k in zip(shapes, keep)]
        if self.keep_skips:
            deepest_pre_attention = self._encode_level_by_level(image, canvas, skips)
        else:
            deepest_pre_attention = self._encode_fused(image, canvas, skips)
        last = self.net.encoder[-1]
        deepest = self._attention(last[2], deepest_pre_attention, "encode-attention")
        del deepest_pre_attention
        skips[-1] = deepest.to(skips[-1].dtype)
        canvas.latent = self._local_at_deepest(lambda x: self.net.latent_conv(last[3](x)), [deepest],
                                               2, "encode-latent")
        canvas.skips = skips
        return canvas

    def _encode_fused(self, image, canvas, skips):
        """All local encoder levels in one pass per tile (one large halo); keeps only what ``skips``
        has room for. Used when the skips are recomputed, since it needs no intermediate canvas."""
        dh, dw = self._deep_hw(canvas)
        deepest_pre_attention = None
        tiles = partition(dh, dw, self.tile)
        for i, core in enumerate(tiles):
            region = core.grow(self.enc_halo, dh, dw)
            hidden = self._local_encoder(image, canvas, region, self.depth)
            for j, tensor in enumerate(hidden[:-1]):
                if skips[j] is not None:
                    level = self._level_of(j)
                    ys, xs = core.scaled(self._level_scale(level)).slices
                    skips[j][:, :, ys, xs] = self._host(self._crop(tensor, level, core, region), skips[j].dtype)
            if deepest_pre_attention is None:
                deepest_pre_attention = torch.empty(1, hidden[-1].shape[1], dh, dw)
            deepest_pre_attention[..., core.y0:core.y1, core.x0:core.x1] = \
                self._host(self._crop(hidden[-1], self.depth - 1, core, region))
            self._report("encode", i + 1, len(tiles))
        return deepest_pre_attention

    def _encode_level_by_level(self, image, canvas, skips):
        """One pass per level with that level's own small halo, writing the skips and the next
        level's input canvas (the DESIGN's 'halo per level'); faster than the fused pass when the
        skips are kept anyway, for one extra transient canvas per level."""
        dh, dw = self._deep_hw(canvas)
        tiles = partition(dh, dw, self.tile)
        total = len(tiles) * self.depth
        level_input = None
        for level, (block1, block2, _, down) in enumerate(self.net.encoder):
            scale = self._level_scale(level)
            last = level == self.depth - 1
            halo_px = (1 if level == 0 else 0) + 4 + (0 if last else 2) + 1
            halo = -(-halo_px // scale)
            out = None
            for i, core in enumerate(tiles):
                region = core.grow(halo, dh, dw)
                if level == 0:
                    x = self.net.init_conv(self._dev(padded_region(image, region.scaled(self.unit), canvas.padded_hw)))
                    skips[0][(slice(None), slice(None)) + core.scaled(scale).slices] = \
                        self._host(self._crop(x, 0, core, region), skips[0].dtype)
                else:
                    r = region.scaled(scale)
                    x = self._dev(level_input[:, :, r.y0:r.y1, r.x0:r.x1])
                x = block1(x)
                skips[2 * level + 1][(slice(None), slice(None)) + core.scaled(scale).slices] = \
                    self._host(self._crop(x, level, core, region), skips[2 * level + 1].dtype)
                x = block2(x)
                if last:
                    y, y_level = x, level
                else:
                    skips[2 * level + 2][(slice(None), slice(None)) + core.scaled(scale).slices] = \
                        self._host(self._crop(x, level, core, region), skips[2 * level + 2].dtype)
                    y, y_level = down(x), level + 1
                if out is None:
                    s2 = self._level_scale(y_level)
                    out = torch.empty(1, y.shape[1], dh * s2, dw * s2)
                out[(slice(None), slice(None)) + core.scaled(self._level_scale(y_level)).slices] = \
                    self._host(self._crop(y, y_level, core, region))
                self._report("encode", level * len(tiles) + i + 1, total)
            level_input = out
        return level_input

    def _hidden_shapes(self, canvas):
        hp, wp = canvas.padded_hw
        shapes = [(1, self.net.init_conv.out_channels, hp, wp)]
        for level, (block1, _, _, _) in enumerate(self.net.encoder):
            s = 2 ** level
            c = block1.block1.proj.out_channels
            shapes += [(1, c, hp // s, wp // s)] * 2
        return shapes

    # ---- decode -----------------------------------------------------------------------------
    def decode(self, latent, canvas, image=None):
        """Latent canvas (1, E, h, w) + the encode's Canvas → output (1, C, H, W) on the host.

        ``image`` is needed when the skips are recomputed (keep_skips=False)."""
        if not self.keep_skips and image is None:
            raise ValueError("decode needs the image to recompute the skips")
        skips = canvas.skips
        first = self.net.decoder[0]
        deep_a = self._local_at_deepest(
            lambda z, s1, s2: first[1](torch.cat([first[0](torch.cat([self.net.post_latent_conv(z), s1], 1)), s2], 1)),
            [latent, skips[-1], skips[-2]], 4, "decode-deep")
        deep_b = self._attention(first[2], deep_a, "decode-attention")
        del deep_a
        dh, dw = deep_b.shape[-2:]
        out = torch.empty(1, self.net.final_conv.out_channels, *canvas.image_hw)
        tiles = partition(dh, dw, self.tile)
        for i, core in enumerate(tiles):
            region = core.grow(self.dec_halo, dh, dw)
            hidden = self._skips_for(region, canvas, image)
            y = self._decoder_tail(self._dev(deep_b[:, :, region.y0:region.y1, region.x0:region.x1]), hidden)
            ys, xs = core.scaled(self.unit).relative_to(region.scaled(self.unit))
            y = y[:, :, ys, xs]
            py0, px0 = core.y0 * self.unit, core.x0 * self.unit
            hy = min(y.shape[2], canvas.image_hw[0] - py0)
            hx = min(y.shape[3], canvas.image_hw[1] - px0)
            if hy > 0 and hx > 0:
                out[:, :, py0:py0 + hy, px0:px0 + hx] = self._host(y[:, :, :hy, :hx])
            self._report("decode", i + 1, len(tiles))
        return out

    def _skips_for(self, region, canvas, image):
        """hidden[0 .. 2·depth−2] for a region (deepest units), at each level's scale, on the device."""
        n = 2 * self.depth - 1    # all but the deepest level's two, which the tail does not read
        if self.keep_skips:
            result = []
            for j in range(n):
                r = region.scaled(self._level_scale(self._level_of(j)))
                result.append(self._dev(canvas.skips[j][:, :, r.y0:r.y1, r.x0:r.x1]))
            return result
        dh, dw = self._deep_hw(canvas)
        outer = region.grow(self.enc_halo, dh, dw)
        hidden = self._local_encoder(image, canvas, outer, self.depth - 1)
        return [self._crop(hidden[j], self._level_of(j), region, outer) for j in range(n)]

    def _decoder_tail(self, x, hidden):
        """From the deepest level after attention to final_conv, for one region."""
        x = self.net.decoder[0][3](x)
        d = self.depth
        for k, (block1, block2, attn, up) in enumerate(self.net.decoder[1:], start=1):
            x = block1(torch.cat([x, hidden[2 * d - 2 * k]], 1))        # = hidden[-(2k+1)] of the full list
            x = block2(torch.cat([x, hidden[2 * d - 2 * k - 1]], 1))    # = hidden[-(2k+2)]
            x = up(attn(x))
        return self.net.final_conv(x + hidden[0])
