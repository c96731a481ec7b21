"""The sample stage: reverse-process runs over the canvas, their final states averaged.

Each run starts at x_T = μ + λz (or, with a prior image, from the forward process around its latent
at ``start_step``) and runs ``sde.sample`` down to x_0 in ``options.steps`` network evaluations on the
model's own schedule (``sde.timesteps`` spaces them), with ε from ``NoiseNetEvaluation`` (whole or
tiled, per the plan). With ``samples`` = K > 1 the reverse process runs K times from the same μ, run
k drawing its random numbers from stream k (run 0 is the single-sample result), and the K final
latents are averaged: a Monte-Carlo estimate of the posterior mean, which is what minimises the
squared error when the samples disagree. K × the sampling time; one decode. With ``ensemble`` run k
also sees μ in orientation k mod 4 (``ORIENTATIONS``; its final latent is turned back before the
average): the network's errors in different orientations are less alike than those of different
start noises, so the mean is closer to the clean latent for the same cost.

On the CPU with a tiled noise network the runs go a band of rows at a time over the canvases
(``banded_sampling``: the same numbers, without whole-canvas temporaries, on canvases in RAM or in
scratch files); otherwise ``sde.sample`` runs on whole tensors (on a GPU, on the device).
"""
import torch

from .. import sde
from .banded_sampling import sample_bands
from .canvas import Canvas
from .noise_net import NoiseNetEvaluation
from .rng import START_STEP, run_noise

__all__ = ["ORIENTATIONS", "schedule_for", "run_steps", "sample_canvas", "SampleProgress"]

BANDED_ON_CPU = True   # tiled noise on the CPU: the banded sampler (False: sde.sample on whole tensors)

# Orientations of the canvas for the ensemble, as (name, forward, inverse) on (..., H, W) tensors:
# the identity, a horizontal flip, the transpose and the transpose of the flip.  Vertical flips are
# left out: a hazy scene is far at the top, and the network has learned it.
ORIENTATIONS = (
    ("identity", lambda t: t, lambda t: t),
    ("hflip", lambda t: t.flip(-1), lambda t: t.flip(-1)),
    ("transpose", lambda t: t.transpose(-1, -2), lambda t: t.transpose(-1, -2)),
    ("transpose_hflip", lambda t: t.flip(-1).transpose(-1, -2), lambda t: t.transpose(-1, -2).flip(-1)),
)


def schedule_for(model):
    """The model's own T-step SDE schedule: the one its network was trained on. Fewer steps visit
    fewer of its time steps (``sde.timesteps``); they never rebuild it."""
    return sde.make_schedule(**model.sde)


def run_steps(options, start, T):
    """Network evaluations per run: ``options.steps`` (None: every step from ``start`` down), at most
    the ``start`` steps below a prior start (more are capped: they do not exist there)."""
    if not 1 <= start <= T:
        raise ValueError(f"start step must be in 1..{T}, got {start}")
    return start if options.steps is None else min(options.steps, start)


def sample_canvas(model, mu, plan, options, device, dtype, *, lens=None, guess=None, start_step=None,
                  report=None, stats=None):
    """The reverse process from μ (a host canvas) in ``options.samples`` runs; returns the mean final
    state on the host.

    ``guess``: the latent of a prior image; each run then starts at ``start_step`` from the forward
    process around it (``sde.prior_start_state``) and takes only those steps. On a GPU the canvases
    stay on the device. ``report(stage, done, total)``: progress; ``stats["cuda_graph"]``: the noise
    network's graph counts (``NoiseNetEvaluation.graph_stats``).
    """
    sch = schedule_for(model)
    runs = options.samples
    start = sch.T if guess is None else start_step
    steps = run_steps(options, start, sch.T)
    orientations = ORIENTATIONS if options.ensemble else ORIENTATIONS[:1]
    if device.type == "cpu" and plan.noise_mode == "tiled" and BANDED_ON_CPU:
        # tiles on the CPU: a band at a time over the canvases, in RAM or scratch files (same numbers)
        as_canvas = lambda c: c if c is None or isinstance(c, Canvas) else Canvas.of(c.float())  # noqa: E731
        return sample_bands(model, sch, as_canvas(mu), plan, options, dtype, lens=lens, guess=as_canvas(guess),
                            start=start, steps=steps, orientations=orientations, folder=plan.folder("latent"),
                            progress=SampleProgress(report, runs * steps))
    mu, guess = (c.whole() if isinstance(c, Canvas) else c for c in (mu, guess))
    layout = _memory_format(mu)
    if device.type == "cuda":
        mu = mu.to(device)
        guess = None if guess is None else guess.to(device)
    # draw step t−1's random numbers on the host while the GPU runs step t
    prefetch = device.type == "cuda" and sde.NEEDS_NOISE[options.sampler]
    progress = SampleProgress(report, runs * steps)
    noise_net = NoiseNetEvaluation(model.noise, plan, device, dtype, lens=lens, cuda_graphs=options.cuda_graphs,
                                   on_tile_batch=progress.tile_batch)
    if stats is not None:
        stats["cuda_graph"] = noise_net.graph_stats

    total = None
    for run in range(runs):
        orientation = orientations[run % len(orientations)]
        mu_run = _turn(mu, orientation, layout)
        noise_net.condition_on(mu_run)
        with run_noise(options.seed, run, device, prefetch) as noise:
            if guess is None:
                x = sde.start_state(sch, mu_run, noise(START_STEP, mu_run))
            else:
                x = sde.prior_start_state(sch, _turn(guess, orientation, layout), mu_run, start,
                                          noise(START_STEP, mu_run))
            x = sde.sample(noise_net, x, mu_run, sch, options.sampler, noise,
                           callback=lambda i, t, first=run * steps: progress.evaluated(first + i, noise_net),
                           start_step=start, steps=steps)
        x = orientation[2](x)
        total = x.clone() if total is None else total.add_(x)
    return (total / runs if runs > 1 else total).cpu()


class SampleProgress:
    """Reports ("sample", done, total) over all runs' evaluations: in evaluations, or in network
    calls (evaluations × tile batches) when the canvas is tiled."""

    def __init__(self, report, evaluations):
        self.report = report or (lambda *args: None)
        self.total = evaluations   # of all runs
        self.done = 0              # evaluations finished

    def tile_batch(self, done, calls):
        """From inside an eager tiled evaluation: ``done`` of its ``calls`` network calls."""
        self.report("sample", self.done * calls + done, self.total * calls)

    def evaluated(self, index, noise_net):
        """After evaluation ``index`` (0-based, counting every run's)."""
        self.done = index + 1
        if not noise_net.reports_tile_batches:
            calls = noise_net.calls_per_step()
            self.report("sample", self.done * calls, self.total * calls)


def _memory_format(mu):
    """Turned canvases keep μ's memory layout (channels-last from the tiled compressor: the CPU's
    convolutions are faster in it)."""
    if mu.dim() == 4 and not mu.is_contiguous() and mu.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _turn(t, orientation, memory_format):
    name, forward, _ = orientation
    return t if name == "identity" else forward(t).contiguous(memory_format=memory_format)
