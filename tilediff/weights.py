"""Model files: one safetensors file per model, and conversion of reference checkpoints into them.

A model file holds the noise network under ``noise.`` and, for latent tasks, its compressor under
``compressor.`` (the two only work as a pair). Its metadata (all strings, JSON where structured):
``format``, ``task``, ``noise_variant``, ``noise_config``, ``compressor_config``, ``sde``,
``value_range``, ``provenance`` and optional ``description``/``training``/``quality``.
Reference pickles are read only with ``torch.load(weights_only=True)``.

Importing this module imports neither the engine nor io (``tilediff.io`` is imported when a file is
written), so that ``tilediff info`` and the training code load it cheaply.
"""
import datetime
import hashlib
import json
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from ._version import __version__
from .models import ArchitectureError, attach_schedule, build, count_parameters, infer, strip_prefix
from .tasks import DEFAULT_TASK_FOR_VARIANT, get_task

FORMAT = "tilediff-model/1"


class ModelFileError(ValueError):
    """A checkpoint or model file that cannot be used; the message is one line naming the file."""


@dataclass
class Model:
    """A loaded model file: the networks (eval mode) and what the metadata says about them."""

    noise: torch.nn.Module
    compressor: torch.nn.Module | None
    task: str
    noise_variant: str
    noise_config: dict
    compressor_config: dict | None
    sde: dict
    metadata: dict = field(default_factory=dict)
    path: Path | None = None

    def to(self, device=None, dtype=None):
        self.noise.to(device=device, dtype=dtype)
        if self.compressor is not None:
            self.compressor.to(device=device, dtype=dtype)
        return self


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _first_sentence(err, limit=160):
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    text = text.split(". ")[0]
    return text if len(text) <= limit else text[:limit] + "…"


def read_checkpoint(path):
    """The state dict of a reference .pth (safely unpickled), with a ``module.`` prefix stripped."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ModelFileError(f"{path}: empty file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ModelFileError(f"{path}: not a plain weights checkpoint ({_first_sentence(e)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise ModelFileError(f"{path}: corrupt or truncated checkpoint ({_first_sentence(e)})") from None
    except Exception as e:  # the unpickler fails on foreign bytes with assorted errors
        raise ModelFileError(f"{path}: not a PyTorch checkpoint ({type(e).__name__}: {_first_sentence(e)})") from None
    if isinstance(obj, dict):
        for key in ("params_ema", "params", "state_dict", "model"):  # common wrappers
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        raise ModelFileError(f"{path}: not a state dict of tensors (found {type(obj).__name__})")
    return strip_prefix(obj)


def _load_network(path, state_dict, variant_hint=None):
    """Recognise, build and strictly load a network; errors name the file and the problem."""
    try:
        variant, config = infer(state_dict, variant_hint)
        net = build(variant, config)
    except (ArchitectureError, ValueError, ZeroDivisionError) as e:
        raise ModelFileError(f"{path}: {e}") from None
    try:
        net.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0]
        raise ModelFileError(f"{path}: weights do not match the inferred {variant} architecture ({detail[:200]})") from None
    return variant, config, net


def _check_finite(path, state_dict):
    for k, v in state_dict.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise ModelFileError(f"{path}: tensor {k!r} holds NaN or infinite values")


def convert(noise_path, compressor_path=None, task=None, output=None, description="", overwrite=False):
    """Turn reference checkpoints into one model file; returns its path. Writes nothing on error.

    ``output`` (default: the noise checkpoint with .safetensors) is checked first
    (``io.atomic.check_output``): it must not be one of the checkpoints, must be a regular file or
    not exist, and an existing file is replaced only with ``overwrite``."""
    from .io.atomic import check_output   # here, not at the top: reading model files needs no io
    from .io.errors import ImageWriteError
    output = Path(output) if output else Path(noise_path).with_suffix(".safetensors")
    try:
        check_output(output, inputs=[p for p in (noise_path, compressor_path) if p is not None],
                     overwrite=overwrite)
    except ImageWriteError as e:
        raise ModelFileError(str(e)) from None
    noise_sd = read_checkpoint(noise_path)
    _check_finite(noise_path, noise_sd)
    task_obj = get_task(task) if task else None
    if task_obj is not None:
        hint = task_obj.variant
    else:
        hint = "latent" if compressor_path else "pixel"
    variant, noise_config, _ = _load_network(noise_path, noise_sd, hint)
    if variant == "compressor":
        raise ModelFileError(f"{noise_path}: this is a compressor checkpoint; pass it with --compressor "
                             "and give the noise-network checkpoint first")
    if task_obj is None:
        task_obj = get_task(DEFAULT_TASK_FOR_VARIANT[variant])
    if task_obj.variant != variant:
        raise ModelFileError(f"{noise_path}: a {variant} network does not fit task {task_obj.name} "
                             f"(which needs a {task_obj.variant} network)")

    compressor_sd, compressor_config = None, None
    if task_obj.latent:
        if compressor_path is None:
            raise ModelFileError(f"{noise_path}: task {task_obj.name} works in a latent space; also pass "
                                 "its compressor checkpoint (--compressor)")
        compressor_sd = read_checkpoint(compressor_path)
        _check_finite(compressor_path, compressor_sd)
        kind, compressor_config, _ = _load_network(compressor_path, compressor_sd)
        if kind != "compressor":
            raise ModelFileError(f"{compressor_path}: expected a compressor checkpoint, found a {kind} noise network")
        if compressor_config["embed_dim"] != noise_config["img_channel"]:
            raise ModelFileError(
                f"{compressor_path}: compressor latent has {compressor_config['embed_dim']} channels but the noise "
                f"network expects {noise_config['img_channel']}: these checkpoints are not a pair")
    elif compressor_path is not None:
        raise ModelFileError(f"{compressor_path}: task {task_obj.name} works in pixel space and takes no compressor")

    provenance = {
        "converted_by": f"tilediff {__version__}",
        "converted_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "noise_checkpoint": {"name": Path(noise_path).name, "sha256": _sha256(noise_path)},
    }
    if compressor_path is not None:
        provenance["compressor_checkpoint"] = {"name": Path(compressor_path).name,
                                               "sha256": _sha256(compressor_path)}
    save_model(output, noise_sd, variant, noise_config, compressor_sd, compressor_config,
               task=task_obj.name, sde=task_obj.sde, provenance=provenance, description=description)
    return output


def save_model(path, noise_state, noise_variant, noise_config, compressor_state=None, compressor_config=None,
               *, task, sde, provenance=None, description="", extra=None):
    """Write a model file atomically (``io.atomic.replacing``): an interrupted write leaves the old file."""
    from .io.atomic import replacing   # here, not at the top: reading model files needs no io
    tensors = {f"noise.{k}": v.detach().to("cpu").contiguous() for k, v in noise_state.items()}
    if compressor_state is not None:
        tensors.update({f"compressor.{k}": v.detach().to("cpu").contiguous() for k, v in compressor_state.items()})
    metadata = {
        "format": FORMAT,
        "task": task,
        "noise_variant": noise_variant,
        "noise_config": json.dumps(noise_config),
        "compressor_config": json.dumps(compressor_config),
        "sde": json.dumps(sde),
        "value_range": "0,1",
        "provenance": json.dumps(provenance or {}),
        "description": description,
    }
    for k, v in (extra or {}).items():
        metadata[k] = v if isinstance(v, str) else json.dumps(v)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)
    return path


def metadata_flag(meta, key) -> bool:
    """A yes/no field of a model file's metadata (stored as the JSON text 'true' / 'false')."""
    value = meta.get(key, False)
    return value is True or str(value).strip().lower() in ("true", "1", "yes")


def read_metadata(path):
    """The metadata of a model file, JSON fields decoded."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            keys = list(f.keys())
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelFileError(f"{path}: not a safetensors model file ({_first_sentence(e)})") from None
    if meta.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a tilediff model file (metadata format is {meta.get('format')!r}); "
                             "convert reference checkpoints with `tilediff convert`")
    for k in ("noise_config", "compressor_config", "sde", "provenance", "training", "quality"):
        if k in meta:
            meta[k] = json.loads(meta[k])
    meta["tensor_count"] = len(keys)
    return meta


def read_model_tensors(path):
    """The tensors of a model file split by network: ``{"noise": {...}, "compressor": {...}}``, keys
    without their prefix (the compressor part is empty for pixel tasks). Any other prefix is an error:
    a file that holds more than the two networks is not one this code wrote."""
    path = Path(path)
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as e:
        raise ModelFileError(f"{path}: cannot read tensors ({_first_sentence(e)})") from None
    parts = {"noise": {}, "compressor": {}}
    for k, v in tensors.items():
        prefix, _, rest = k.partition(".")
        if prefix not in parts:
            raise ModelFileError(f"{path}: unexpected tensor {k!r} (expected noise.* or compressor.*)")
        parts[prefix][rest] = v
    return parts


_CORE_METADATA = {"format", "task", "noise_variant", "noise_config", "compressor_config", "sde", "value_range",
                  "provenance", "description", "tensor_count"}


def update_metadata(path, **fields):
    """Rewrite a model file with extra metadata fields (e.g. ``quality`` after an evaluation).

    safetensors keeps the metadata in the header, so a change means writing the file again; the
    tensors and every other field are kept as they are.
    """
    meta = read_metadata(path)
    parts = read_model_tensors(path)
    extra = {k: v for k, v in meta.items() if k not in _CORE_METADATA}   # training, quality, default_sampler, ...
    extra.update(fields)
    save_model(path, parts["noise"], meta["noise_variant"], meta["noise_config"], parts["compressor"] or None,
               meta["compressor_config"], task=meta["task"], sde=meta["sde"], provenance=meta.get("provenance"),
               description=meta.get("description", ""), extra=extra)


def load_model(path, device="cpu"):
    """Build both networks from a model file and load their weights strictly."""
    path = Path(path)
    meta = read_metadata(path)
    parts = read_model_tensors(path)
    try:
        noise = attach_schedule(build(meta["noise_variant"], meta["noise_config"]), meta["sde"])
        noise.load_state_dict(parts["noise"], strict=True)
        compressor = None
        if meta["compressor_config"] is not None:
            compressor = build("compressor", meta["compressor_config"])
            compressor.load_state_dict(parts["compressor"], strict=True)
    except (RuntimeError, ValueError, TypeError) as e:
        raise ModelFileError(f"{path}: tensors do not match the configuration in its metadata "
                             f"({_first_sentence(e)})") from None
    model = Model(noise.eval(), compressor.eval() if compressor is not None else None, meta["task"],
                  meta["noise_variant"], meta["noise_config"], meta["compressor_config"], meta["sde"], meta, path)
    return model.to(device)


def default_cost_text(meta):
    """What the model file's defaults cost: network evaluations per image (runs × steps per run)."""
    T = int(meta["sde"].get("T", 100))
    start = T
    if meta.get("default_prior") not in (None, "", "none"):
        start = max(1, min(T, round(float(meta.get("default_prior_t", 0.5)) * T)))
    per_run = min(int(meta.get("default_steps") or start), start)
    runs = int(meta.get("default_samples", 1))
    return (f"{runs * per_run} network evaluations per image with the defaults ({runs} run{'s' * (runs > 1)} × "
            f"{per_run} steps{f' from t = {start}' if start != T else ''}), one encode and one decode")


def describe(path):
    """Human-readable summary of a model file (for `tilediff info`)."""
    meta = read_metadata(path)
    model = load_model(path)
    lines = [f"{Path(path).name}: tilediff model file ({meta['format']})",
             f"  task:        {meta['task']}",
             f"  noise net:   {meta['noise_variant']} {json.dumps(meta['noise_config'])} "
             f"({count_parameters(model.noise) / 1e6:.2f} M parameters)"]
    if model.compressor is not None:
        lines.append(f"  compressor:  {json.dumps(meta['compressor_config'])} "
                     f"({count_parameters(model.compressor) / 1e6:.2f} M parameters)")
    else:
        lines.append("  compressor:  none (pixel-space task)")
    lines.append(f"  sde:         {json.dumps(meta['sde'])}")
    lines.append(f"  value range: [{meta['value_range'].replace(',', ', ')}]")
    if meta.get("description"):
        lines.append(f"  description: {meta['description']}")
    if meta.get("default_sampler"):
        lines.append(f"  sampler:     {meta['default_sampler']} (used when --sampler is not given)")
    if meta.get("default_steps"):
        lines.append(f"  steps:       {meta['default_steps']} network evaluations per run on the "
                     f"{meta['sde'].get('T', 100)}-step schedule (used when --steps is not given)")
    if int(meta.get("default_samples", 1)) > 1:
        lines.append(f"  samples:     {meta['default_samples']} reverse runs averaged "
                     "(used when --samples is not given)")
    if metadata_flag(meta, "default_ensemble"):
        lines.append("  ensemble:    the runs see the latent in four orientations (used when --ensemble / "
                     "--no-ensemble is not given)")
    if meta.get("default_prior") not in (None, "", "none"):
        lines.append(f"  prior:       the runs start from the {meta['default_prior']} estimate's latent at "
                     f"t = {meta.get('default_prior_t', 0.5)} T (used when --prior is not given)")
    if metadata_flag(meta, "default_recompose"):
        lines.append("  recompose:   the output is rebuilt from the input with the transmission it implies "
                     "(used when --recompose / --no-recompose is not given)")
    lines.append(f"  cost:        {default_cost_text(meta)}")
    if meta.get("noise_tile"):
        lines.append(f"  noise tile:  {meta['noise_tile']} latent units, overlap {meta.get('noise_overlap', 'default')} "
                     "(the training crop; --mode auto evaluates the noise network on such tiles)")
    for key in ("provenance", "training", "quality"):
        if meta.get(key):
            lines.append(f"  {key + ':':12} {json.dumps(meta[key])}")
    return "\n".join(lines)
