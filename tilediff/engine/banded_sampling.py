"""The sample stage on the CPU with a tiled noise network: the reverse process a band of rows at a
time, over canvases in RAM or in scratch files, without one whole-canvas temporary.

``sde.sample`` updates the whole canvas at once (x, ε, z and the update's temporaries: six
canvases). With the noise network on overlapping tiles, a row of the canvas is final for a step
once every tile that covers it has given its ε; so each step walks the tiles in their order (the
batches of ``tiled_noise_fn``, row by row), adds each tile's windowed ε into a band buffer, and as
soon as rows are covered by no later tile applies the sampler's update to them (``sde``'s own step
functions, which are per pixel) and writes them back in place: later tiles start below them and
never read them again in this step. Random numbers come by region (``PositionalNoise.region``), so
every number, every ε and every update is the one ``sde.sample`` computes on the whole canvas,
bit for bit (``tests/test_streaming.py``). What is held: x and μ (canvases), a band of ε and
weights as tall as a row of tiles, one batch of tiles; for ``mrs`` the last x̂_0 (a canvas), for
several runs their sum (a canvas), for an ensemble μ turned (a canvas).
"""
import torch

from .. import sde
from ..tiling import blend_window, grid
from .canvas import Canvas
from .noise_net import _lens_kwargs, _network_input
from .rng import START_STEP, PositionalNoise

__all__ = ["sample_bands", "TURNS"]

# each orientation of ``sampling.ORIENTATIONS`` as primitive turns of a canvas: (forward, inverse)
TURNS = {"identity": ((), ()), "hflip": (("flip",), ("flip",)), "transpose": (("T",), ("T",)),
         "transpose_hflip": (("flip", "T"), ("T", "flip"))}
BAND_ROWS = 256   # rows per band of the canvas-wide passes (start state, turns, sums)


def sample_bands(model, sch, mu, plan, options, dtype, *, lens=None, guess=None, start=None, steps=None,
                 orientations, folder=None, progress=None):
    """The reverse process of ``sampling.sample_canvas`` on canvases (``Canvas``); returns the
    mean final state as a Canvas in ``folder`` (None: RAM). ``start``: the first step (T, or the
    prior start step with ``guess``, the prior's latent canvas); ``steps``: evaluations per run."""
    runs = options.samples
    total = None
    for run in range(runs):
        name = orientations[run % len(orientations)][0]
        forward, inverse = TURNS[name]
        mu_run = _turned(mu, forward, folder)
        x = Canvas(mu.channels, mu_run.height, mu_run.width, folder=folder)
        noise = PositionalNoise(options.seed, stream=run)
        # the start: x_T = μ + λz, or the forward process around the prior's latent at ``start``
        guess_run = _turned(guess, forward, folder) if guess is not None else None
        for y0, y1 in _bands(x.height):
            z = noise.region(START_STEP, x.channels, y0, y1, 0, x.width)[None]
            m = mu_run.read(y0, y1)
            x.write(y0, 0, sde.start_state(sch, m, z) if guess_run is None else
                    sde.prior_start_state(sch, guess_run.read(y0, y1), m, start, z))
        if guess_run is not None and guess_run is not guess:
            guess_run.close()
        # the steps (sde.sample's loop, each update made band by band as the tiles finish rows)
        visited = sde.timesteps(sch, steps, start)
        previous = Canvas(mu.channels, x.height, x.width, folder=folder) if options.sampler == "mrs" else None
        for i, t in enumerate(visited):
            s = visited[i + 1] if i + 1 < len(visited) else 0
            _step(model.noise, sch, x, mu_run, t, s, options.sampler, noise, plan, dtype, lens,
                  previous if i > 0 else None, visited[i - 1] if i > 0 else None, previous,
                  lambda done, calls, i=i: progress.tile_batch(done, calls) if progress else None)
            if progress is not None:
                progress.done += 1
        if previous is not None:
            previous.close()
        if mu_run is not mu:
            mu_run.close()
        x_back = _turned(x, inverse, folder)
        if x_back is not x:
            x.close()
        if total is None:
            total = x_back
        else:
            for y0, y1 in _bands(total.height):
                total.write(y0, 0, total.read(y0, y1) + x_back.read(y0, y1))
            x_back.close()
    if runs > 1:
        for y0, y1 in _bands(total.height):
            total.write(y0, 0, total.read(y0, y1) / runs)
    return total


def _step(net, sch, x, mu, t, s, sampler, noise, plan, dtype, lens, prev_x0, prev_t, x0_out, report):
    """One evaluation at t and the update t → s, in place on the canvas x, a band at a time."""
    h, w, c = x.height, x.width, x.channels
    tiles = grid(h, w, plan.noise_tile, plan.noise_overlap)
    batch = plan.noise_batch
    groups = [list(range(i, min(i + batch, len(tiles)))) for i in range(0, len(tiles), batch)]
    kwargs = _lens_kwargs(lens, torch.device("cpu"))
    step = sde.get_step(sampler)
    top = 0                                   # the first row not updated yet; the band buffers start there
    eps = torch.zeros(1, c, 0, w)
    weight = torch.zeros(0, w)
    for g, group in enumerate(groups):
        bottom = max(tiles[i].y1 for i in group)
        if bottom > top + eps.shape[2]:        # grow the band buffers down to the group's last row
            grow = bottom - top - eps.shape[2]
            eps = torch.cat([eps, torch.zeros(1, c, grow, w)], 2)
            weight = torch.cat([weight, torch.zeros(grow, w)], 0)
        xs, ms = (torch.cat([c.read(tiles[i].y0, tiles[i].y1, tiles[i].x0, tiles[i].x1) for i in group])
                  .contiguous(memory_format=torch.channels_last) for c in (x, mu))
        out = net(_network_input(xs, xs.device, dtype), _network_input(ms, ms.device, dtype), t, **kwargs)
        out = out.to(torch.float32)
        for j, i in enumerate(group):
            tile = tiles[i]
            window = blend_window(tile, tiles, h, w)
            rows = slice(tile.y0 - top, tile.y1 - top)
            eps[:, :, rows, tile.x0:tile.x1] += out[j:j + 1] * window
            weight[rows, tile.x0:tile.x1] += window
        report(g + 1, len(groups))
        done = tiles[groups[g + 1][0]].y0 if g + 1 < len(groups) else h   # rows no later tile covers
        if done > top:
            n = done - top
            x_rows, mu_rows = x.read(top, done), mu.read(top, done)
            eps_rows = eps[:, :, :n] / weight[:n]
            if sampler == "mrs":
                x0_hat = sde.mrs_x0(sch, x_rows, mu_rows, eps_rows, t)
                prev = None if prev_x0 is None else (prev_x0.read(top, done), prev_t)
                new = sde.mrs_update(sch, x_rows, mu_rows, x0_hat, t, s, prev)
                x0_out.write(top, 0, x0_hat)
            else:
                z = noise.region(t, c, top, done, 0, w)[None] if sde.NEEDS_NOISE[sampler] else None
                new = step(sch, x_rows, mu_rows, eps_rows, t, z, s)
            x.write(top, 0, new)
            eps, weight, top = eps[:, :, n:], weight[n:], done


def _bands(height):
    for y0 in range(0, height, BAND_ROWS):
        yield y0, min(height, y0 + BAND_ROWS)


def _turned(canvas, turns, folder):
    """The canvas after the primitive turns ("flip": mirror left-right, "T": transpose), band by
    band; the canvas itself when there are none."""
    original = canvas
    for turn in turns:
        if turn == "flip":
            out = Canvas(canvas.channels, canvas.height, canvas.width, folder=folder)
            for y0, y1 in _bands(canvas.height):
                out.write(y0, 0, canvas.read(y0, y1).flip(-1))
        else:
            out = Canvas(canvas.channels, canvas.width, canvas.height, folder=folder)
            for y0, y1 in _bands(canvas.height):
                out.write(0, y0, canvas.read(y0, y1).transpose(-1, -2))
        if canvas is not original:
            canvas.close()
        canvas = out
    return canvas
