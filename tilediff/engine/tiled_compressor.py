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
from dataclasses import dataclass

import torch

from ..models.compressor import reflect_index
from ..tiling import partition
from .oom import retry_smaller


# Host canvases are channels-last like the tiles, so that slicing a region out of them and storing a
# tile's core back are plain copies rather than layout transposes.
CL = torch.channels_last


def padded_region(image, region, padded_hw):
    """The region of the reflect-padded image (padding right/bottom to ``padded_hw``) as a tensor."""
    _, _, h, w = image.shape
    rows = reflect_index(padded_hw[0], h)[region.y0:region.y1]
    cols = reflect_index(padded_hw[1], w)[region.x0:region.x1]
    if region.y1 <= h and region.x1 <= w:
        return image[:, :, region.y0:region.y1, region.x0:region.x1]
    return image[:, :, rows][:, :, :, cols]


def encoder_halo(depth, levels=None):
    """Contaminated border width, in deepest-level units, of the fused local encoder run through
    ``levels`` levels (default all), plus a margin: the halo a tile needs for exact results."""
    levels = depth if levels is None else levels
    c = 1                           # init_conv
    for level in range(levels):
        c += 4                      # two ResBlocks of two 3×3 convs
        if level < levels - 1:
            c = (c + 2) // 2 + 1    # 4×4 stride-2 conv
    return -(-c // 2 ** (depth - levels)) + 1


def finest_decode_halo(depth):
    """Halo, in deepest-level units, of the finest decoder pass (upsample conv, ResBlocks, convs)."""
    return -(-(1 + 4 + 2 + 1) // 2 ** (depth - 1))


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
                 skip_dtype=torch.float32, level_dtype=torch.float32, progress=None, recompute_levels=None):
        self.net = compressor
        self.device = device
        self.dtype = dtype
        self.tile = max(1, int(tile))            # in deepest-level units
        self.keep_skips = keep_skips
        # encoder levels whose skips are recomputed at decode time instead of kept: all but the
        # deepest when keep_skips is False; with keep_skips, the finest ``recompute_levels`` levels
        # (level 0 holds most of the skip memory and is the cheapest to recompute).
        self.recompute_levels = (compressor.depth - 1 if not keep_skips else (recompute_levels or 0))
        self.skip_dtype = skip_dtype
        self.level_dtype = level_dtype           # the decoder's per-level output canvases
        self.progress = progress
        self.depth = compressor.depth
        self.unit = 2 ** (compressor.depth - 1)  # pixels per deepest-level unit
        self.enc_halo = encoder_halo(self.depth)
        compressor.to(memory_format=torch.channels_last)

    # ---- helpers ----------------------------------------------------------------------------
    def _retry(self, run_pass):
        """Run one pass over tiles; on a CUDA out-of-memory error halve the tile and run it again.
        Passes write fresh canvases, so a repeated pass gives the same result."""
        return retry_smaller(run_pass, self._halve_tile)

    def _halve_tile(self):
        """Halve the tile (after an out-of-memory error); False when it is one unit already."""
        if self.tile <= 1:
            return False
        self.tile = max(1, self.tile // 2)
        return True

    def _dev(self, x):
        # channels-last: the convolutions run about twice as fast in it (oneDNN and cuDNN)
        return x.to(device=self.device, dtype=self.dtype).contiguous(memory_format=torch.channels_last)

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
        sums = attn.merge(parts)   # float32 (see LinearAttention.reduce): a 16-bit Σ overflows on large maps
        sums = tuple(p.to(self.device) if torch.is_tensor(p) else p for p in sums)
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
                out = torch.empty(1, y.shape[1], h, w, memory_format=CL)
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
        keep = [self._level_of(i) >= self.recompute_levels for i in range(n_hidden)]
        skips = [torch.empty(s, dtype=self.skip_dtype, memory_format=CL) if k else None
                 for s, k in zip(shapes, keep)]
        if self.keep_skips:   # (recomputing only the finest levels still uses the level-by-level pass)
            deepest_pre_attention = self._retry(lambda: self._encode_level_by_level(image, canvas, skips))
        else:
            deepest_pre_attention = self._retry(lambda: self._encode_fused(image, canvas, skips))
        last = self.net.encoder[-1]
        deepest = self._retry(lambda: self._attention(last[2], deepest_pre_attention, "encode-attention"))
        deepest_pre_attention = None  # free it before the next pass
        skips[-1] = deepest.to(skips[-1].dtype)
        canvas.latent = self._retry(lambda: self._local_at_deepest(lambda x: self.net.latent_conv(last[3](x)),
                                                                   [deepest], 2, "encode-latent"))
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
                self._store(skips, j, tensor, self._level_of(j), core, region)
            if deepest_pre_attention is None:
                deepest_pre_attention = torch.empty(1, hidden[-1].shape[1], dh, dw, memory_format=CL)
            deepest_pre_attention[..., core.y0:core.y1, core.x0:core.x1] = \
                self._host(self._crop(hidden[-1], self.depth - 1, core, region))
            self._report("encode", i + 1, len(tiles))
        return deepest_pre_attention

    def _store(self, skips, index, tensor, level, core, region):
        """Write the core of a region's hidden tensor into its kept skip canvas (if it is kept)."""
        if skips[index] is not None:
            ys, xs = core.scaled(self._level_scale(level)).slices
            skips[index][:, :, ys, xs] = self._host(self._crop(tensor, level, core, region), skips[index].dtype)

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
                    self._store(skips, 0, x, 0, core, region)
                else:
                    r = region.scaled(scale)
                    x = self._dev(level_input[:, :, r.y0:r.y1, r.x0:r.x1])
                x = block1(x)
                self._store(skips, 2 * level + 1, x, level, core, region)
                x = block2(x)
                if last:
                    y, y_level = x, level
                else:
                    self._store(skips, 2 * level + 2, x, level, core, region)
                    y, y_level = down(x), level + 1
                if out is None:
                    s2 = self._level_scale(y_level)
                    out = torch.empty(1, y.shape[1], dh * s2, dw * s2, memory_format=CL)
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
    def decode(self, latent, canvas, image=None, release=False):
        """Latent canvas (1, E, h, w) + the encode's Canvas → output (1, C, H, W) on the host.

        Level by level: the deepest level (local part, then attention) on the deepest canvas, then
        one pass per finer level (upsample of the previous level's output + this level's ResBlocks,
        and at the finest level the last conv and final_conv), each with its own small halo.
        ``image`` is needed when the skips are recomputed (keep_skips=False); ``release`` frees the
        kept skips of a level once its pass is done (the canvas cannot be decoded again then).
        """
        if self.recompute_levels and image is None:
            raise ValueError("decode needs the image to recompute the skips")
        skips = canvas.skips
        first = self.net.decoder[0]
        deep_a = self._retry(lambda: self._local_at_deepest(
            lambda z, s1, s2: first[1](torch.cat([first[0](torch.cat([self.net.post_latent_conv(z), s1], 1)), s2], 1)),
            [latent, skips[-1], skips[-2]], 4, "decode-deep"))
        y = self._retry(lambda: self._attention(first[2], deep_a, "decode-attention"))
        deep_a = None
        if release:
            skips[-1] = skips[-2] = None
        for k in range(1, self.depth):
            y = self._retry(lambda: self._decode_level(k, y, canvas, image))
            if release:
                skips[2 * self.depth - 2 * k] = skips[2 * self.depth - 2 * k - 1] = None
        return y

    def _decode_level(self, k, previous, canvas, image):
        """Decoder level k ≥ 1 over tiles: up(previous) → two ResBlocks with skips [→ final convs]."""
        d = self.depth
        level = d - 1 - k                       # the encoder level (scale) this decoder level runs at
        scale = self._level_scale(level)
        finest = k == d - 1
        block1, block2, attn, up = self.net.decoder[k]
        halo_px = 1 + 4 + (2 if finest else 0) + 1       # upsample conv, ResBlocks, last convs, margin
        halo = -(-halo_px // scale)
        dh, dw = self._deep_hw(canvas)
        skip_a, skip_b = 2 * d - 2 * k, 2 * d - 2 * k - 1   # = hidden[-(2k+1)], hidden[-(2k+2)]
        tiles = partition(dh, dw, self.tile)
        if finest:
            out = torch.empty(1, self.net.final_conv.out_channels, *canvas.image_hw)
        else:
            out = torch.empty(1, block2.block2.proj.out_channels, dh * scale, dw * scale,
                              dtype=self.level_dtype, memory_format=CL)
        prev_scale = self._level_scale(level + 1)
        for i, core in enumerate(tiles):
            region = core.grow(halo, dh, dw)
            hidden = self._level_skips(region, canvas, image, level, (skip_a, skip_b) + ((0,) if finest else ()))
            r = region.scaled(prev_scale)
            x = self.net.decoder[k - 1][3](self._dev(previous[:, :, r.y0:r.y1, r.x0:r.x1]))
            x = block1(torch.cat([x, hidden[skip_a]], 1))
            x = attn(block2(torch.cat([x, hidden[skip_b]], 1)))
            if finest:
                x = self.net.final_conv(up(x) + hidden[0])
            ys, xs = core.scaled(scale).relative_to(region.scaled(scale))
            x = x[:, :, ys, xs]
            y0, x0 = core.y0 * scale, core.x0 * scale
            hy, hx = min(x.shape[2], out.shape[2] - y0), min(x.shape[3], out.shape[3] - x0)
            if hy > 0 and hx > 0:
                out[:, :, y0:y0 + hy, x0:x0 + hx] = self._host(x[:, :, :hy, :hx], out.dtype)
            self._report("decode", (k - 1) * len(tiles) + i + 1, (d - 1) * len(tiles))
        return out

    def _level_skips(self, region, canvas, image, level, indices):
        """The hidden tensors ``indices`` for a region (deepest units) on the device: sliced from
        the kept skips, or recomputed by the local encoder's levels 0..level from the image."""
        result = {}
        missing = []
        for j in indices:
            if canvas.skips[j] is None:
                missing.append(j)
                continue
            r = region.scaled(self._level_scale(self._level_of(j)))
            result[j] = self._dev(canvas.skips[j][:, :, r.y0:r.y1, r.x0:r.x1])
        if missing:
            levels = max(self._level_of(j) for j in missing) + 1
            dh, dw = self._deep_hw(canvas)
            outer = region.grow(encoder_halo(self.depth, levels), dh, dw)
            hidden = self._local_encoder(image, canvas, outer, levels)
            result.update({j: self._crop(hidden[j], self._level_of(j), region, outer) for j in missing})
        return result
