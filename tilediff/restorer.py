"""The public restoration API: ``Restorer`` (one model, many images)."""
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import engine
from .tasks import get_task
from .weights import ModelFileError, load_model


def resolve_device(device):
    """'auto' → cuda when available, else cpu."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA device is available")
    return device


def to_float_rgb(image):
    """An HxWxC array (uint8, uint16 or float in [0,1]) as float32 HxWx3 in [0,1]."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ValueError(f"expected an HxW or HxWxC image, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255
    elif arr.dtype == np.uint16:
        arr = arr.astype(np.float32) / 65535
    else:
        arr = arr.astype(np.float32)
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] == 4:
        arr = arr[..., :3]
    elif arr.shape[2] != 3:
        raise ValueError(f"expected 1, 3 or 4 channels, got {arr.shape[2]}")
    if not np.isfinite(arr).all():
        raise ValueError("image holds NaN or infinite values")
    return np.clip(arr, 0, 1)


def _dark_channel_prior(rgb, device):
    """The dark channel prior of an HxWx3 array: numpy on the CPU, torch on a GPU (haze_torch)."""
    if device.type == "cuda":
        from .tasks.dehaze import torch_ops as haze_torch
        return haze_torch.dark_channel_prior(haze_torch.to_device_rgb(rgb, device)).cpu().numpy()
    from .tasks.dehaze.dcp import dark_channel_prior
    return dark_channel_prior(rgb)


def _haze_recompose(hazy, restored, device):
    """recompose.haze_recompose of HxWx3 arrays: numpy on the CPU, torch on a GPU (haze_torch)."""
    if device.type == "cuda":
        from .tasks.dehaze import torch_ops as haze_torch
        return haze_torch.haze_recompose(haze_torch.to_device_rgb(hazy, device),
                                         haze_torch.to_device_rgb(restored, device)).cpu().numpy()
    from .tasks.dehaze.recompose import haze_recompose
    return haze_recompose(hazy, restored)


# Prior images a reverse run can start from (Restorer.restore(prior=...)): name → (task, function
# of the HxWx3 input and the device returning an HxWx3 estimate).
PRIORS = {"dcp": ("dehaze", _dark_channel_prior)}


class Restorer:
    """Restores images with one model file.

    >>> r = Restorer("dehaze")                       # the shipped weights
    >>> r = Restorer("dehaze", weights="model.safetensors")
    >>> out = r.restore(image)                        # HxWx3 float32 in [0, 1]
    """

    def __init__(self, task=None, weights=None, device="auto", precision="fp32"):
        if weights is None:
            if task is None:
                raise ValueError("give a task or a weights file")
            task_obj = get_task(task)
            weights = task_obj.shipped_weights()
            if weights is None:
                raise ModelFileError(
                    f"task {task_obj.name} has no shipped weights: pass --weights MODEL.safetensors "
                    f"(convert the reference checkpoints, {task_obj.reference_checkpoints}, with "
                    f"`tilediff convert`)")
        self.device = resolve_device(device)
        self.model = load_model(weights, device=self.device)
        if task is not None and get_task(task).name != self.model.task:
            raise ModelFileError(f"{weights}: this model file is for task {self.model.task}, not {task}")
        self.task = get_task(self.model.task)
        self.precision = precision
        self.weights = Path(weights)

    @property
    def default_sampler(self):
        """The model file's ``default_sampler``; the reference's 'sde' when it names none."""
        return self.model.metadata.get("default_sampler", "sde")

    @property
    def default_samples(self):
        """The model file's ``default_samples`` (reverse runs averaged); 1 when it names none."""
        return int(self.model.metadata.get("default_samples", 1))

    @property
    def default_ensemble(self):
        """The model file's ``default_ensemble`` (runs in four orientations); False when it names none."""
        from .weights import metadata_flag
        return metadata_flag(self.model.metadata, "default_ensemble")

    @property
    def default_prior(self):
        """The model file's ``default_prior`` (a ``PRIORS`` name) and ``default_prior_t`` (the start step
        as a fraction of the schedule's T); (None, None) when it names none."""
        name = self.model.metadata.get("default_prior")
        if name in (None, "", "none"):
            return None, None
        return name, float(self.model.metadata.get("default_prior_t", 0.5))

    @property
    def default_recompose(self):
        """The model file's ``default_recompose`` (dehazing: rebuild the output from the input with the
        transmission the restored image implies, see ``recompose``); False when it names none."""
        from .weights import metadata_flag
        return metadata_flag(self.model.metadata, "default_recompose")

    def restore(self, image, *, steps=None, sampler=None, seed=0, tile=None, overlap=None, mode="auto",
                memory_budget=None, src_lens=None, tgt_lens=None, disparity=None, progress=None, stats=None,
                compressor_tile=None, batch=None, cuda_graphs=True, samples=None, ensemble=None,
                recompose=None, prior=None, prior_t=None):
        """Restore one image (HxWxC array or a path); returns float32 HxWx3 in [0, 1].

        For stereo-sr pass a (left, right) pair; a pair comes back. ``mode`` 'whole' runs the
        reference algorithm on the whole image at once; 'tiled' forces tiling; 'auto' plans.
        ``stats`` (a dict) receives the plan and the seconds per stage. ``sampler`` None takes the
        model file's ``default_sampler`` (the reference's 'sde' when it names none). ``samples`` K > 1
        averages the final latents of K reverse runs (an estimate of the posterior mean; K × the
        sampling time); None takes the model file's ``default_samples`` (1 when it names none).
        ``ensemble`` True runs those K runs in turn on the latent as it is, flipped left-right,
        transposed and both (engine.ORIENTATIONS); None takes the model file's ``default_ensemble``. On CUDA
        one sampler step is captured as a CUDA graph and replayed (``cuda_graphs=False`` runs it eagerly).
        ``prior`` (a ``PRIORS`` name, 'none' for no prior) starts each reverse run at step
        round(``prior_t`` × T) from the forward process around the latent of that classic estimate (for
        dehazing 'dcp', the dark channel prior), so the network refines the estimate over those steps;
        None takes the model file's ``default_prior`` / ``default_prior_t``.
        ``recompose`` (dehazing only) True rebuilds the output from the input with the transmission the
        restored image implies (``recompose.haze_recompose``: the model decides the haze, the input gives
        the detail); None takes the model file's ``default_recompose``.
        """
        if sampler is None:
            sampler = self.default_sampler
        if samples is None:
            samples = self.default_samples
        if ensemble is None:
            ensemble = self.default_ensemble
        prior, prior_t = self.prior_choice(prior, prior_t)
        if recompose is None:
            recompose = self.default_recompose and self.task.name == "dehaze"
        elif recompose and self.task.name != "dehaze":
            raise ValueError(f"recompose applies to dehazing only, not to task {self.task.name}")
        if isinstance(image, (str, Path)):
            from .io import read_image
            image = read_image(image).rgb
        if self.task.stereo:
            if not (isinstance(image, (tuple, list)) and len(image) == 2):
                raise ValueError("stereo-sr restores a (left, right) pair of images")
            left, right = (to_float_rgb(v) for v in image)
            if left.shape != right.shape:
                raise ValueError(f"left and right views differ in size: {left.shape} vs {right.shape}")
            x = torch.cat([self._tensor(left), self._tensor(right)], dim=1)
        else:
            x = self._tensor(to_float_rgb(image))
        lens = None
        if self.task.needs_lens:
            if src_lens is None or tgt_lens is None or disparity is None:
                raise ValueError("the bokeh task needs src_lens, tgt_lens and disparity")
            from .tasks import lens_value
            lens = (lens_value(src_lens), lens_value(tgt_lens), float(disparity))
        prior_x, start_step = None, None
        if prior is not None:
            start = time.perf_counter()
            prior_x = self._tensor(PRIORS[prior][1](self._input_rgb(x), self.device))
            prior_seconds = time.perf_counter() - start
            total_steps = steps or self.model.sde["T"]
            start_step = max(1, min(total_steps, round(prior_t * total_steps)))
        options = engine.Options(steps=steps, sampler=sampler, seed=seed, tile=tile, overlap=overlap, mode=mode,
                                 memory_budget=memory_budget, precision=self.precision, progress=progress,
                                 compressor_tile=compressor_tile, batch=batch, cuda_graphs=cuda_graphs,
                                 samples=samples, ensemble=bool(ensemble), start_step=start_step,
                                 stats=stats if stats is not None else {})
        out = engine.restore_tensor(self.model, x, options, device=self.device, lens=lens, prior=prior_x)
        out = out[0].permute(1, 2, 0).numpy()
        if prior is not None:
            options.stats["seconds"]["prior"] = prior_seconds
        if recompose:
            start = time.perf_counter()
            out = _haze_recompose(self._input_rgb(x), out, self.device)
            options.stats["seconds"]["recompose"] = time.perf_counter() - start
        if self.task.stereo:
            return out[..., :3].copy(), out[..., 3:].copy()
        return out

    def prior_choice(self, prior, prior_t):
        """(name, fraction) of the prior start to use, or (None, None); checks both."""
        default_name, default_t = self.default_prior
        if prior is None:
            prior = default_name
        if prior in (None, "none"):
            return None, None
        if prior not in PRIORS:
            raise ValueError(f"unknown prior {prior!r}; expected one of {', '.join(['none', *PRIORS])}")
        if PRIORS[prior][0] != self.task.name:
            raise ValueError(f"the {prior} prior is for task {PRIORS[prior][0]}, not {self.task.name}")
        if prior_t is None:
            prior_t = default_t if default_t is not None else 0.5
        if not 0 < prior_t <= 1:
            raise ValueError(f"prior_t must be in (0, 1], got {prior_t}")
        return prior, float(prior_t)

    @staticmethod
    def _input_rgb(x):
        """The network's (1, 3, H, W) input canvas as an HxWx3 array (a view)."""
        return x[0].permute(1, 2, 0).numpy()

    def _tensor(self, rgb):
        x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None]
        if self.task.upscale != 1:
            x = F.interpolate(x, scale_factor=self.task.upscale, mode="bicubic", align_corners=False).clamp(0, 1)
        return x

    def restore_file(self, src, dst, **options):
        """Read, restore and write one file, keeping bit depth, alpha and metadata (see io)."""
        from .io import read_image, write_image
        image = read_image(src)
        out = self.restore(image.rgb, **options)
        write_image(dst, out, like=image)
        return Path(dst)
