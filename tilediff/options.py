"""RestoreOptions: every restore option, declared once, validated once, model defaults applied once.

The command line, ``restore_folder`` and ``Restorer.restore`` all build one ``RestoreOptions``
(``RestoreOptions.build(task, **options)`` from flat keyword arguments), so an option is named,
checked and documented here only. A task's own options (dehazing's prior start and recomposition,
bokeh's lenses) are declared by the task (``tasks.Task.options``) and held in ``task_options``.

Two steps, so that errors come before any work:
1. ``build`` (or the constructor) checks what needs no model: names, types, ranges;
2. ``resolve(model)`` fills what the model file decides (``default_steps``, ``default_sampler``,
   ``default_samples``, ``default_ensemble`` and the task's defaults) and checks what depends on it (steps ≤ T).
The engine only ever sees resolved options. This module imports no torch.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable

SAMPLERS = ("sde", "ode", "posterior", "mrs")   # the sampler names of tilediff.sde
MODES = ("auto", "whole", "tiled")
PRECISIONS = ("fp32", "fp16", "bf16")
SIZE_UNITS = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}
MIN_MEMORY_BUDGET = 64 << 20   # below this not even the model code fits


def parse_size(text) -> int:
    """A memory size such as '4GB', '512 MB', '1.5G', '2GiB' or a number of bytes, as bytes.

    Units: B, KB, MB, GB, TB (powers of 1024; 'KiB' etc. and the bare letters K, M, G, T are the
    same). Raises ValueError for anything else, for a value that is not a finite positive number,
    and for sizes below 64 MB (``MIN_MEMORY_BUDGET``).
    """
    if isinstance(text, bool):
        raise ValueError(f"not a memory size: {text!r}")
    if isinstance(text, (int, float)):
        value, unit = float(text), "B"
    else:
        t = str(text).strip().upper().replace("IB", "B").replace(" ", "")
        number = t.rstrip("KMGTB")
        unit = t[len(number):] or "B"
        unit = unit if unit.endswith("B") else unit + "B"
        try:
            value = float(number)
        except ValueError:
            value = math.nan
        if unit not in SIZE_UNITS:
            value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"cannot read memory size {text!r}: use a positive number with B, KB, MB, GB or TB "
                         "(e.g. 4GB)")
    size = value * SIZE_UNITS[unit]
    if size > 1 << 60:
        raise ValueError(f"memory size {text!r} is larger than any machine")
    if size < MIN_MEMORY_BUDGET:
        raise ValueError(f"memory size {text!r} is below the least tilediff can work in (64 MB)")
    return int(size)


def _check_int(name, value, low=None, high=None, optional=True):
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be at least {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be at most {high}, got {value}")


def _check_choice(name, value, choices, optional=True):
    if value is None and optional:
        return
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(choices)}")


class TaskOptions:
    """Base of a task's own options (a frozen dataclass declared by the task): its field names, built
    from keyword arguments (checked in the dataclass's ``__post_init__``), and its model-file defaults
    (``resolve``; none by default)."""

    @classmethod
    def names(cls):
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def build(cls, **options):
        return cls(**options)

    def resolve(self, meta):
        return self


@dataclass(frozen=True)
class RestoreOptions:
    """How to restore an image. ``None`` means: the model file's choice, else the documented default.

    steps          network evaluations per reverse run, on the model's own T-step schedule (≤ T; None: the
                   model file's ``default_steps``, else T)
    sampler        sde | ode | posterior | mrs (None: the model file's ``default_sampler``, else sde)
    seed           random numbers are keyed by (seed, step, position): same seed, same image
    samples        reverse runs whose final latents are averaged (None: ``default_samples``, else 1)
    ensemble       run k sees the latent in orientation k mod 4 (None: ``default_ensemble``, else off)
    mode           auto (plan under the budget) | whole (the reference algorithm) | tiled (force tiles)
    tile, overlap  noise-network tile and overlap (latent units for latent tasks, pixels otherwise)
    memory_budget  bytes (or a size text such as '4GB'); None: free device memory (CPU: ≤ 4 GiB)
    compressor_tile, batch   compressor tile (latent units) and noise tiles per call; None: planned
    precision      fp32 | fp16 | bf16 (None: the Restorer's)
    cuda_graphs    on CUDA, capture one sampler step as a CUDA graph and replay it
    progress       progress(stage, done, total), called as the stages advance
    task_options   the task's own options (an instance of ``tasks.get_task(name).options``), or None
    """

    steps: int | None = None
    sampler: str | None = None
    seed: int = 0
    samples: int | None = None
    ensemble: bool | None = None
    mode: str = "auto"
    tile: int | None = None
    overlap: int | None = None
    memory_budget: int | None = None
    compressor_tile: int | None = None
    batch: int | None = None
    precision: str | None = None
    cuda_graphs: bool = True
    progress: Callable | None = field(default=None, compare=False, repr=False)
    task_options: object | None = None

    def __post_init__(self):
        if self.memory_budget is not None and (isinstance(self.memory_budget, bool)
                                               or not isinstance(self.memory_budget, int)):
            try:
                object.__setattr__(self, "memory_budget", parse_size(self.memory_budget))
            except ValueError as e:
                raise ValueError(f"memory_budget: {e}") from None
        _check_int("steps", self.steps, 1)
        _check_choice("sampler", self.sampler, SAMPLERS)
        _check_int("seed", self.seed, optional=False)
        _check_int("samples", self.samples, 1)
        _check_choice("mode", self.mode, MODES, optional=False)
        _check_int("tile", self.tile, 1)
        _check_int("overlap", self.overlap, 0)
        _check_int("compressor_tile", self.compressor_tile, 1)
        _check_int("batch", self.batch, 1)
        _check_choice("precision", self.precision, PRECISIONS)
        if self.memory_budget is not None and self.memory_budget < MIN_MEMORY_BUDGET:
            raise ValueError(f"memory_budget must be at least 64 MB, got {self.memory_budget} bytes")
        if self.tile is not None and self.overlap is not None and self.overlap >= self.tile:
            raise ValueError(f"overlap ({self.overlap}) must be smaller than the tile ({self.tile})")
        if self.ensemble is not None and not isinstance(self.ensemble, bool):
            raise ValueError(f"ensemble must be True, False or None, got {self.ensemble!r}")
        if self.progress is not None and not callable(self.progress):
            raise ValueError("progress must be a callable progress(stage, done, total)")

    # ---- building ------------------------------------------------------------------------------
    @classmethod
    def fields(cls):
        """The names of the generic options (everything but ``task_options``)."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.name != "task_options")

    @classmethod
    def build(cls, task, **options) -> "RestoreOptions":
        """Options for ``task`` (a name or a ``tasks.Task``) from flat keyword arguments: the generic
        ones above and the task's own (e.g. ``prior=`` for dehaze, ``src_lens=`` for bokeh). An option
        of another task, or one that no task knows, is a ValueError naming it."""
        from .tasks import TASKS, get_task
        task = get_task(task) if isinstance(task, str) else task
        generic = {k: options.pop(k) for k in list(options) if k in cls.fields()}
        own = task.options.names() if task.options is not None else ()
        mine = {k: options.pop(k) for k in list(options) if k in own}
        for name, value in options.items():
            owners = [t.name for t in TASKS.values() if t.options is not None and name in t.options.names()]
            if not owners:
                raise ValueError(f"unknown restore option {name!r}")
            if value is None:
                continue
            raise ValueError(f"{name} applies to {' and '.join(owners)} only, not to task {task.name}")
        task_options = task.options.build(**mine) if task.options is not None else None
        return cls(**generic, task_options=task_options)

    def replace(self, **changes) -> "RestoreOptions":
        return dataclasses.replace(self, **changes)

    # ---- the model file's defaults ---------------------------------------------------------------
    def resolve(self, model, precision="fp32") -> "RestoreOptions":
        """These options with every None the model file decides filled in, checked against the model
        (``model``: a loaded ``weights.Model``; ``precision``: the Restorer's, used when None)."""
        from .weights import metadata_flag
        meta = model.metadata or {}
        T = int(model.sde["T"])
        steps = self.steps if self.steps is not None else meta.get("default_steps")
        steps = None if steps in (None, "", "none") else int(steps)
        if steps is not None and steps > T:
            raise ValueError(f"steps ({steps}) must be at most the model's T = {T}: steps are network "
                             "evaluations on the schedule the model was trained on")
        sampler = self.sampler or meta.get("default_sampler") or "sde"
        _check_choice("sampler", sampler, SAMPLERS, optional=False)
        samples = self.samples if self.samples is not None else int(meta.get("default_samples", 1))
        ensemble = self.ensemble if self.ensemble is not None else metadata_flag(meta, "default_ensemble")
        task_options = self.task_options.resolve(meta) if self.task_options is not None else None
        return self.replace(steps=steps, sampler=sampler, samples=samples, ensemble=bool(ensemble),
                            precision=self.precision or precision, task_options=task_options)

    def as_json(self) -> dict:
        """The options as JSON values (for the batch summary); the progress callback is left out."""
        data = {k: getattr(self, k) for k in self.fields() if k != "progress"}
        if self.task_options is not None:
            data.update(dataclasses.asdict(self.task_options))
        return data
