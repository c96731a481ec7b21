"""The compressor over tiles, exact: the tiled result equals the whole-image result to float rounding.

The compressor is local (3×3 convolutions, stride-2 downsampling, nearest upsampling) except the
LinearAttention on its deepest level, in the encoder and in the decoder. So the work is cut at those
two global layers, and each local part runs over tiles with a halo computed from its receptive field.
Where each tile's data comes from and goes to:

encode (``encode``)
  1. local: each tile reads its region (+ halo, reflect-padded at the right and bottom edges) from
     the source → the kept skips of its core, its core of the deepest pre-attention map (the
     ``deep_x`` canvas), and its part of the encoder attention's softmax/k·v sums. Either one pass
     per level, each with its own small halo, through transient level canvases (fast), or one
     fused pass with the whole encoder's halo (no canvas at all);
  2. per tile of ``deep_x`` (+ halo 2): the attention applied with the merged sums → the deepest
     skip and, through the last conv and latent_conv, the tile's core of the latent canvas.
decode (``decode_bands``, a generator)
  3. per tile of the latent (+ halo 4): post_latent_conv and the deepest ResBlocks with the deepest
     skips → the ``deep_a`` canvas and the decoder attention's sums;
  4. per output tile, in raster order: the whole rest of the decoder on the tile's region, grown
     level by level by each level's halo (attention on ``deep_a`` with the sums, then each finer
     level with its skips: kept ones sliced from their canvases, the others recomputed from the
     source by the local encoder); each finished row of tiles is yielded as a band of rows.

No decoder level canvas exists: a tile's levels are computed on the tile's own region. Canvases
(``canvas.Canvas``) live in RAM or in a scratch file, as the plan's ``where`` says. Tiles are cut
on the deepest level's grid (units of 2^(depth−1) pixels), so every level's region starts on its
own stride grid, and regions are clipped at the canvas edges, where each convolution's own zero
padding is then the whole-image padding. Interior halos are cropped away after each level.
"""
import mmap
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..models.compressor import reflect_index
from ..tiling import Tile, even_cuts, partition
from .canvas import Canvas, TensorSource
from .oom import retry_smaller

__all__ = ["TiledCompressor", "Encoded", "padded_region", "encoder_halo", "finest_decode_halo",
           "decoder_halos", "decode_reach"]

# Tiles on the device are channels-last: the convolutions run about twice as fast in it.
CL = torch.channels_last


def resblock(block, x):
    """``block(x)`` of a compressor ResBlock (conv → SiLU → conv → SiLU, plus the residual), with
    the SiLUs and the sum in place: the same numbers, two fewer tile-sized temporaries each."""
    h = block.block1.proj(x)
    F.silu(h, inplace=True)
    h = block.block2.proj(h)
    F.silu(h, inplace=True)
    return h.add_(block.res_conv(x))


def upsample_conv(up, x, skip=None):
    """``up(x)`` of a compressor ``Upsample`` (nearest ×2, then a 3×3 convolution with padding 1)
    without making the ×2 input: each of the four output phases (even/odd rows × columns) is a 2×2
    convolution of x, its 3×3 taps that fall on the same input pixel summed first, and the phases
    are interleaved into the output. The same result to float rounding, in 4/9 of the multiply-adds,
    and the tile's largest tensor (the ×2 input: 64 channels at full size) never exists. With
    ``skip``, returns ``torch.cat([up(x), skip], 1)``, the phases written into the concatenation.

    All four phases come from one convolution of x padded by 1 (4 × the output channels, one
    (h+1) × (w+1) map each): phase (a, c) is its block a·2+c shifted by (a, c). One call reads x
    once, with no padded copy of it and no strided input (which the convolution would copy first)."""
    conv = up[1]
    w = conv.weight
    o = conv.out_channels
    # output row 2i takes input rows i−1 (tap 0) and i (taps 1, 2); row 2i+1 rows i (taps 0, 1) and i+1 (tap 2)
    pairs = ((lambda k: k[..., 0:1], lambda k: k[..., 1:2] + k[..., 2:3]),
             (lambda k: k[..., 0:1] + k[..., 1:2], lambda k: k[..., 2:3]))
    kernels = []
    for a in (0, 1):
        rows = torch.cat([f(w.transpose(2, 3)).transpose(2, 3) for f in pairs[a]], 2)    # (O, I, 2, 3)
        kernels += [torch.cat([f(rows) for f in pairs[c]], 3) for c in (0, 1)]          # (O, I, 2, 2)
    bias = None if conv.bias is None else conv.bias.repeat(4)
    phases = F.conv2d(x, torch.cat(kernels), bias, padding=1)       # (B, 4·O, h+1, w+1)
    b, _, h, wd = x.shape
    extra = 0 if skip is None else skip.shape[1]
    out = torch.empty(b, o + extra, 2 * h, 2 * wd, dtype=x.dtype, device=x.device, memory_format=CL)
    for a in (0, 1):
        for c in (0, 1):
            block = 2 * a + c
            out[:, :o, a::2, c::2] = phases[:, block * o:(block + 1) * o, a:a + h, c:c + wd]
    if skip is not None:
        out[:, o:] = skip
    return out


def _mapped_array(shape):
    """An uninitialised float32 array in its own anonymous memory map, outside the malloc heap: an
    output band lives across a row of tiles, and a heap block that long-lived splits the free space
    the tiles' tensors reuse (2000×3000, official networks: 0.85 GiB decode peak against 0.87)."""
    count = int(np.prod(shape))
    return np.frombuffer(mmap.mmap(-1, max(4 * count, 1)), np.float32, count=count).reshape(shape)


def padded_region(source, region, padded_hw):
    """A region (pixels) of the source reflect-padded at the right/bottom to ``padded_hw``, as a
    (1, C, h, w) float32 tensor; only the rows and columns it needs are read from the source."""
    h, w = source.height, source.width
    if region.y1 <= h and region.x1 <= w:
        return torch.as_tensor(source.region(region.y0, region.y1, region.x0, region.x1))[None]
    rows = reflect_index(padded_hw[0], h)[region.y0:region.y1]
    cols = reflect_index(padded_hw[1], w)[region.x0:region.x1]
    r0, r1, c0, c1 = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
    block = torch.as_tensor(source.region(r0, r1, c0, c1))
    return block[:, rows - r0][:, :, cols - c0][None]


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


def decoder_halos(depth):
    """Halo, in deepest-level units, of decoder level k = 1..depth−1 (index k; 0 for the deepest):
    its upsample conv and two ResBlocks (and at the finest level the last two convs), plus 1 px."""
    halos = [0]
    for k in range(1, depth):   # decoder level k runs at encoder level depth−1−k: 2^k pixels per unit
        halo_px = 1 + 4 + (2 if k == depth - 1 else 0) + 1
        halos.append(-(-halo_px // 2 ** k))
    return halos


def decode_reach(depth):
    """How far, in deepest-level units, an output tile's region at the deepest level reaches
    beyond the tile: the decoder levels' halos added up."""
    return sum(decoder_halos(depth))


@dataclass
class Encoded:
    """What the encode keeps for the decode: the latent canvas and the skips (``skips[j]``: a
    ``Canvas`` of hidden tensor j, or None where it is recomputed from the source)."""

    image_hw: tuple
    padded_hw: tuple
    latent: Canvas = None
    skips: list = None

    def close(self):
        for canvas in (self.skips or []):
            if canvas is not None:
                canvas.close()
        self.skips = None


class TiledCompressor:
    """Runs a ``Compressor`` over tiles on ``device`` in ``dtype``, host canvases per ``where``.

    ``keep_from``: the first encoder level whose skips are kept (0: all; ``depth`` − 1: only the
    deepest; the deepest level's are always kept); the finer ones are recomputed from the source at
    decode time. ``keep_skips``/``recompute_levels`` say the same the older way (False: only the
    deepest kept; ``recompute_levels`` = r: levels below r recomputed). ``skip_dtype``: the kept
    skips' dtype. ``level_by_level``: the encode's local part one pass per level (transient level
    canvases in RAM), else one fused pass. ``where``: canvas name ("deep_x", "deep_a", "skips")
    → a scratch folder for a file canvas, or None (default) for RAM.
    """

    def __init__(self, compressor, device, dtype=torch.float32, tile=32, keep_skips=True,
                 skip_dtype=torch.float32, level_dtype=None, progress=None, recompute_levels=None, *,
                 keep_from=None, level_by_level=None, where=None):
        self.net = compressor
        self.device = device
        self.dtype = dtype
        self.tile = max(1, int(tile))            # in deepest-level units
        self.depth = compressor.depth
        if keep_from is None:
            keep_from = (recompute_levels or 0) if keep_skips else self.depth - 1
        self.keep_from = min(int(keep_from), self.depth - 1)
        self.skip_dtype = skip_dtype
        self.level_by_level = keep_skips if level_by_level is None else level_by_level
        self.where = dict(where or {})
        self.progress = progress
        self.unit = 2 ** (compressor.depth - 1)  # pixels per deepest-level unit
        self.enc_halo = encoder_halo(self.depth)
        self.halos = decoder_halos(self.depth)
        compressor.to(memory_format=CL)

    # ---- helpers ----------------------------------------------------------------------------
    def _retry(self, run_pass):
        """Run one pass over tiles; on a CUDA out-of-memory error halve the tile and run it again.
        Passes write fresh outputs, so a repeated pass gives the same result."""
        return retry_smaller(run_pass, self._halve_tile)

    def _halve_tile(self):
        """Halve the tile (after an out-of-memory error); False when it is one unit already."""
        if self.tile <= 1:
            return False
        self.tile = max(1, self.tile // 2)
        return True

    def _dev(self, x):
        """x on the device, channels-last, with the canonical batch stride: a batch of one read from a
        canvas (numpy's [None]: stride 0) is contiguous with any, but torch.cat with it returns a
        channels-first tensor, which each convolution then copied back (0.36 s of a profiled 2000×3000 decode)."""
        x = x.to(device=self.device, dtype=self.dtype).contiguous(memory_format=CL)
        if x.shape[0] == 1 and x.dim() == 4:
            x = x.as_strided(x.shape, (x[0].numel(),) + x.stride()[1:])
        return x

    def _report(self, stage, done, total):
        if self.progress is not None:
            self.progress(stage, done, total)

    def _scale(self, level):
        """Pixels of ``level`` per deepest-level unit."""
        return 2 ** (self.depth - 1 - level)

    def _canvas(self, name, channels, height, width, dtype=torch.float32):
        return Canvas(channels, height, width, folder=self.where.get(name), dtype=dtype)

    @staticmethod
    def _level_of(index):
        """The encoder level a hidden index belongs to (hidden[0] is the init conv, level 0)."""
        return max(0, (index - 1) // 2)

    def _crop(self, tensor, level, core, region):
        """Cut the ``core`` tile (deepest units) out of a tensor holding ``region`` at ``level``."""
        s = self._scale(level)
        ys, xs = core.scaled(s).relative_to(region.scaled(s))
        return tensor[:, :, ys, xs]

    def _read(self, canvas, region, level):
        """A region (deepest units) of a canvas at ``level``, on the device."""
        r = region.scaled(self._scale(level))
        return self._dev(canvas.read(r.y0, r.y1, r.x0, r.x1))

    def _store(self, canvas, tensor, level, core, region):
        """Write the core of a region's tensor (at ``level``) into a canvas."""
        r = core.scaled(self._scale(level))
        canvas.write(r.y0, r.x0, self._crop(tensor, level, core, region).to("cpu", canvas.dtype))

    def _local_encoder(self, source, encoded, region, levels):
        """init_conv and the ResBlocks/downsamples of ``levels`` levels on a source region (deepest
        units); returns the hidden list for that region (its last entry: the last block2 output)."""
        x = self._dev(padded_region(source, region.scaled(self.unit), encoded.padded_hw))
        x = self.net.init_conv(x)
        hidden = [x]
        for level, (block1, block2, _, down) in enumerate(self.net.encoder[:levels]):
            x = resblock(block1, x)
            hidden.append(x)
            x = resblock(block2, x)
            hidden.append(x)
            if level < levels - 1:
                x = down(x)
        return hidden

    def _hidden_channels(self):
        channels = [self.net.init_conv.out_channels]
        for block1, _, _, _ in self.net.encoder:
            channels += [block1.block1.proj.out_channels] * 2
        return channels

    # ---- encode -----------------------------------------------------------------------------
    def encode(self, source, keep=True):
        """The source (a region source, or a (1, C, H, W) tensor) → ``Encoded``: the latent canvas
        and the kept skips (none with ``keep=False``: the latent of a prior image)."""
        if torch.is_tensor(source):
            source = TensorSource(source)
        h, w = source.height, source.width
        m = self.net.multiple
        encoded = Encoded((h, w), (h + (m - h % m) % m, w + (m - w % m) % m))
        dh, dw = encoded.padded_hw[0] // self.unit, encoded.padded_hw[1] // self.unit
        channels = self._hidden_channels()
        skips = [None] * len(channels)
        if keep:
            for j, c in enumerate(channels):
                level = self._level_of(j)
                if level >= self.keep_from:
                    name = "deepest" if level == self.depth - 1 else "skips"
                    skips[j] = self._canvas(name, c, dh * self._scale(level), dw * self._scale(level),
                                            self.skip_dtype)
        deep_x = self._canvas("deep_x", channels[-1], dh, dw)
        try:
            # 1. the local encoder over tiles → kept skips, deep_x and the attention's partial sums
            if self.level_by_level and keep:
                parts = self._retry(lambda: self._encode_level_by_level(source, encoded, skips, deep_x))
            else:
                parts = self._retry(lambda: self._encode_fused(source, encoded, skips, deep_x))
            attention = self.net.encoder[-1][2].fn
            sums = tuple(p.to(self.device) if torch.is_tensor(p) else p for p in attention.fn.merge(parts))
            # 2. the attention applied per tile → the deepest skip and the latent
            encoded.latent = self._canvas("latent", self.net.latent_conv.out_channels, dh, dw)
            self._retry(lambda: self._encode_latent(deep_x, sums, skips[-1], encoded.latent))
        finally:
            deep_x.close()
        encoded.skips = skips if keep else None
        return encoded

    def latent_of(self, source):
        """The latent canvas of another image (a prior estimate): no skips kept."""
        return self.encode(source, keep=False).latent

    def _reduce(self, x):
        """The encoder attention's partial sums over a tile of the deepest pre-attention map."""
        prenorm = self.net.encoder[-1][2].fn
        return tuple(p.float() if torch.is_tensor(p) else p for p in prenorm.fn.reduce(prenorm.norm(x)))

    def _encode_fused(self, source, encoded, skips, deep_x):
        """All local encoder levels in one pass per tile (the whole encoder's halo); no canvas."""
        dh, dw = deep_x.height, deep_x.width
        parts = []
        tiles = partition(dh, dw, self.tile)
        for i, core in enumerate(tiles):
            region = core.grow(self.enc_halo, dh, dw)
            hidden = self._local_encoder(source, encoded, region, self.depth)
            for j, tensor in enumerate(hidden[:-1]):
                if skips[j] is not None:
                    self._store(skips[j], tensor, self._level_of(j), core, region)
            x = self._crop(hidden[-1], self.depth - 1, core, region)
            deep_x.write(core.y0, core.x0, x.to("cpu", torch.float32))
            parts.append(self._reduce(x))
            self._report("encode", i + 1, len(tiles))
        return parts

    def _encode_level_by_level(self, source, encoded, skips, deep_x):
        """One pass per level with that level's own small halo, writing the kept skips and the next
        level's input canvas (the DESIGN's 'halo per level'); faster than the fused pass, for one
        transient canvas per level (in RAM)."""
        dh, dw = deep_x.height, deep_x.width
        tiles = partition(dh, dw, self.tile)
        total = len(tiles) * self.depth
        level_input, parts = None, []
        for level, (block1, block2, _, down) in enumerate(self.net.encoder):
            scale = self._scale(level)
            last = level == self.depth - 1
            halo = -(-((1 if level == 0 else 0) + 4 + (0 if last else 2) + 1) // scale)
            out = None
            for i, core in enumerate(tiles):
                region = core.grow(halo, dh, dw)
                if level == 0:
                    x = self.net.init_conv(self._dev(padded_region(source, region.scaled(self.unit),
                                                                   encoded.padded_hw)))
                    if skips[0] is not None:
                        self._store(skips[0], x, 0, core, region)
                else:
                    x = self._read(level_input, region, level)
                x = resblock(block1, x)
                if skips[2 * level + 1] is not None:
                    self._store(skips[2 * level + 1], x, level, core, region)
                x = resblock(block2, x)
                if last:
                    x = self._crop(x, level, core, region)
                    deep_x.write(core.y0, core.x0, x.to("cpu", torch.float32))
                    parts.append(self._reduce(x))
                else:
                    if skips[2 * level + 2] is not None:
                        self._store(skips[2 * level + 2], x, level, core, region)
                    y = down(x)
                    if out is None:
                        s2 = self._scale(level + 1)
                        out = self._canvas("levels", y.shape[1], dh * s2, dw * s2)
                    self._store(out, y, level + 1, core, region)
                self._report("encode", level * len(tiles) + i + 1, total)
            if level_input is not None:
                level_input.close()
            level_input = out
        return parts

    def _encode_latent(self, deep_x, sums, deepest_skip, latent):
        """Per tile of deep_x (+ halo 2): attention with the merged sums → the deepest skip (the
        attention's output) and the latent (the last conv and latent_conv)."""
        last = self.net.encoder[-1]
        prenorm = last[2].fn
        dh, dw = deep_x.height, deep_x.width
        tiles = partition(dh, dw, self.tile)
        for i, core in enumerate(tiles):
            region = core.grow(2, dh, dw)
            x = self._dev(deep_x.read(region.y0, region.y1, region.x0, region.x1))
            y = prenorm.fn.apply(prenorm.norm(x), sums) + x
            if deepest_skip is not None:
                self._store(deepest_skip, y, self.depth - 1, core, region)
            z = self.net.latent_conv(last[3](y))
            latent.write(core.y0, core.x0, self._crop(z, self.depth - 1, core, region).to("cpu", torch.float32))
            self._report("encode-latent", i + 1, len(tiles))

    # ---- decode -----------------------------------------------------------------------------
    def decode(self, latent, encoded, image=None, release=False):
        """The decoded image as one (1, C, H, W) host tensor (``decode_bands`` collected).
        ``latent``: a Canvas or a (1, E, h, w) tensor; ``image``: the source (or tensor) the
        encode read, needed when skips are recomputed."""
        h, w = encoded.image_hw
        out = None
        for y0, band in self.decode_bands(latent, encoded, image, release=release, clamp=False):
            if out is None:
                out = torch.empty(1, band.shape[2], h, w)
            out[0, :, y0:y0 + band.shape[0]] = torch.from_numpy(band).permute(2, 0, 1)
        return out

    def decode_bands(self, latent, encoded, source=None, release=True, clamp=True):
        """Decode, yielding (y0, rows) bands of the output in raster order: ``rows`` is an
        (h, W, C) float32 array of image rows y0..y0+h (the rows of one row of output tiles),
        clamped to [0, 1] with ``clamp``. ``release`` frees the kept skips once they are used (the
        encoded image cannot be decoded again then)."""
        if torch.is_tensor(latent):
            latent = Canvas.of(latent.float())
        if torch.is_tensor(source):
            source = TensorSource(source)
        skips = encoded.skips
        if source is None and any(s is None for s in skips):
            raise ValueError("decode needs the image to recompute the skips")
        dh, dw = latent.height, latent.width
        # 3. the deepest level's local part → deep_a and the decoder attention's sums
        deep_a = self._canvas("deep_a", self.net.decoder[0][1].block2.proj.out_channels, dh, dw)
        try:
            parts = self._retry(lambda: self._decode_deep(latent, skips, deep_a))
            attention = self.net.decoder[0][2].fn.fn
            sums = tuple(p.to(self.device) if torch.is_tensor(p) else p for p in attention.merge(parts))
            if release:
                for j in (-1, -2):
                    skips[j].close()
                    skips[j] = None
            # 4. every output tile through the rest of the decoder, a row of tiles at a time
            cuts = even_cuts(dh, self.tile)
            for by0, by1 in zip(cuts, cuts[1:]):
                band = self._retry(lambda: self._decode_band(by0, by1, deep_a, sums, encoded, source, clamp))
                if band is not None:
                    yield by0 * self.unit, band
        finally:
            deep_a.close()
            if release:
                encoded.close()

    def _decode_deep(self, latent, skips, deep_a):
        """post_latent_conv and the deepest ResBlocks (with the deepest skips) per tile (+ halo 4)
        → deep_a and the partial sums of the decoder attention."""
        block1, block2, residual, _ = self.net.decoder[0]
        prenorm = residual.fn
        dh, dw = latent.height, latent.width
        deepest = self.depth - 1
        parts = []
        tiles = partition(dh, dw, self.tile)
        for i, core in enumerate(tiles):
            region = core.grow(4, dh, dw)
            z = self._dev(latent.read(region.y0, region.y1, region.x0, region.x1))
            x = resblock(block1, torch.cat([self.net.post_latent_conv(z), self._read(skips[-1], region, deepest)], 1))
            x = resblock(block2, torch.cat([x, self._read(skips[-2], region, deepest)], 1))
            x = self._crop(x, deepest, core, region)
            deep_a.write(core.y0, core.x0, x.to("cpu", torch.float32))
            parts.append(tuple(p.float() if torch.is_tensor(p) else p for p in prenorm.fn.reduce(prenorm.norm(x))))
            self._report("decode-deep", i + 1, len(tiles))
        return parts

    def _decode_band(self, by0, by1, deep_a, sums, encoded, source, clamp):
        """Output rows of deepest units by0..by1 (the whole width) in tiles of ``self.tile``:
        (rows, W, C) float32 image rows, or None below the image."""
        h, w = encoded.image_hw
        y0, y1 = by0 * self.unit, min(h, by1 * self.unit)
        if y0 >= y1:
            return None
        band = None
        row_cuts = even_cuts(by1 - by0, self.tile, by0)   # one row of tiles, or more after a halved tile
        for ty0, ty1 in zip(row_cuts, row_cuts[1:]):
            for core in partition(ty1 - ty0, deep_a.width, self.tile):
                core = Tile(core.y0 + ty0, core.y1 + ty0, core.x0, core.x1)
                x = self._decode_tile(core, deep_a, sums, encoded, source)
                tiles = -(-deep_a.height // self.tile) * -(-deep_a.width // self.tile)
                done = core.y0 * deep_a.width + core.x1 * (core.y1 - core.y0)    # latent pixels decoded
                self._report("decode", round(tiles * done / (deep_a.height * deep_a.width)), tiles)
                top, left = core.y0 * self.unit, core.x0 * self.unit
                rows, cols = min(x.shape[2], h - top), min(x.shape[3], w - left)
                if rows <= 0 or cols <= 0:
                    continue
                if band is None:
                    band = _mapped_array((y1 - y0, w, x.shape[1]))
                tile = x[0, :, :rows, :cols]
                tile = (tile.clamp(0, 1) if clamp else tile).permute(1, 2, 0).to("cpu", torch.float32)
                band[top - y0:top - y0 + rows, left:left + cols] = tile.numpy()
        return band

    def _decode_tile(self, core, deep_a, sums, encoded, source):
        """The decoder from deep_a to the output for one tile (deepest units): each level computed
        on the tile's region grown by the halos of the levels after it, cropped as it goes."""
        d = self.depth
        dh, dw = deep_a.height, deep_a.width
        regions = {d - 1: core.grow(self.halos[d - 1], dh, dw)}    # decoder level k's input region
        for k in range(d - 2, 0, -1):
            regions[k] = regions[k + 1].grow(self.halos[k], dh, dw)
        cores = {k: (regions[k + 1] if k + 1 < d else core) for k in range(1, d)}
        skips = self._tile_skips(regions, encoded, source)
        residual = self.net.decoder[0][2]
        x = self._dev(deep_a.read(regions[1].y0, regions[1].y1, regions[1].x0, regions[1].x1))
        y = residual.fn.fn.apply(residual.fn.norm(x), sums) + x              # the decoder attention
        for k in range(1, d):
            level = d - 1 - k                     # the encoder level (scale) decoder level k runs at
            block1, block2, attn, up = self.net.decoder[k]
            # the previous level's output ×2, with its skip; each input let go before the ResBlock
            # runs (``resblock`` holds the concatenation only)
            x = upsample_conv(self.net.decoder[k - 1][3], y, skips.pop(2 * d - 2 * k))
            del y
            x = resblock(block1, x)
            x = torch.cat([x, skips.pop(2 * d - 2 * k - 1)], 1)
            x = attn(resblock(block2, x))
            if k == d - 1:
                x = self.net.final_conv(up(x).add_(skips.pop(0)))
            y = self._crop(x, level, cores[k], regions[k])
        return y

    def _tile_skips(self, regions, encoded, source):
        """The skips decoder levels 1..depth−1 need over their regions, on the device: sliced
        from the kept canvases, or recomputed by the local encoder from the source."""
        d = self.depth
        wanted = {}                            # hidden index → the region it is needed over
        for k in range(1, d):
            for j in (2 * d - 2 * k, 2 * d - 2 * k - 1) + ((0,) if k == d - 1 else ()):
                wanted[j] = regions[k]
        result, missing = {}, []
        for j, region in wanted.items():
            if encoded.skips[j] is None:
                missing.append(j)
            else:
                result[j] = self._read(encoded.skips[j], region, self._level_of(j))
        if missing:
            levels = max(self._level_of(j) for j in missing) + 1
            reach = max((wanted[j] for j in missing), key=lambda r: (r.y1 - r.y0) * (r.x1 - r.x0))
            dh, dw = encoded.padded_hw[0] // self.unit, encoded.padded_hw[1] // self.unit
            outer = reach.grow(encoder_halo(d, levels), dh, dw)
            hidden = self._local_encoder(source, encoded, outer, levels)
            for j in missing:
                result[j] = self._crop(hidden[j], self._level_of(j), wanted[j], outer)
        return result
