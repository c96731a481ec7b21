"""Evaluation of a model file: haze clean images deterministically, restore them, score them.

The haze of an image depends only on (seed, file name), so every model, sampler or option setting is
scored on the same hazy inputs; the dark channel prior (DCP) is the baseline beside the model. The
tables are markdown, for model cards.
"""
from __future__ import annotations

import time
import zlib
from pathlib import Path

import numpy as np
import torch

from ..io import read_image, write_image
from ..tasks.dehaze import haze
from ..tasks.dehaze.dcp import dark_channel_prior
from .data import list_images
from .metrics import psnr, ssim


def haze_for_eval(clean, name, seed=0, density="moderate"):
    """Deterministic haze for one evaluation image, keyed by (seed, file name)."""
    rng = np.random.default_rng([int(seed), zlib.crc32(str(name).encode())])
    return haze.add_haze(clean, rng, density=density)


def evaluate(weights, images, *, density="moderate", seed=0, steps=None, sampler=None, save_dir=None,
             baseline=True, threads=None, restorer=None, samples=None, ensemble=None, recompose=None, prior=None,
             prior_t=None):
    """Haze clean images deterministically, restore them, and score hazy / DCP / model against clean.

    ``images`` is a folder, a list of folders or a list of (name, HxWx3 float array). ``sampler``,
    ``samples``, ``ensemble``, ``prior``, ``prior_t`` and ``recompose`` None take the model file's
    defaults. Returns a dict with ``per_image`` (name, size, mean transmission, psnr/ssim of hazy, dcp
    and output, seconds) and ``mean``.
    """
    from ..restorer import Restorer   # here: training without evaluating needs no engine
    if threads:
        torch.set_num_threads(int(threads))
    images = _eval_images(images)
    restorer = restorer or Restorer(weights=weights, device="cpu")
    rows = []
    for name, clean in images:
        hazy, info = haze_for_eval(clean, name, seed, density)
        t0 = time.time()
        out = restorer.restore(hazy, steps=steps, sampler=sampler, seed=seed, samples=samples, ensemble=ensemble,
                               recompose=recompose, prior=prior, prior_t=prior_t)
        seconds = time.time() - t0
        row = {"name": name, "size": f"{clean.shape[1]}x{clean.shape[0]}",
               "mean_transmission": round(info["mean_transmission"], 3),
               "hazy_psnr": psnr(hazy, clean), "hazy_ssim": ssim(hazy, clean),
               "psnr": psnr(out, clean), "ssim": ssim(out, clean), "seconds": round(seconds, 2)}
        if baseline:
            dcp = dark_channel_prior(hazy)
            row.update(dcp_psnr=psnr(dcp, clean), dcp_ssim=ssim(dcp, clean))
        rows.append(row)
        if save_dir is not None:
            d = Path(save_dir)
            d.mkdir(parents=True, exist_ok=True)
            stem = Path(name).stem
            write_image(d / f"{stem}_hazy.png", hazy)
            write_image(d / f"{stem}_out.png", out)
            if baseline:
                write_image(d / f"{stem}_dcp.png", dcp)
    used_prior, used_prior_t = restorer.prior_choice(prior, prior_t)
    mean = _metric_means(rows)
    for r in rows:
        r.update({k: round(float(r[k]), 4) for k in mean})
    return {"weights": str(weights), "density": density, "seed": seed,
            "sampler": sampler or restorer.default_sampler,
            "steps": steps if steps is not None else (restorer.options().steps or restorer.model.sde.get("T")),
            "samples": samples or restorer.default_samples,
            "ensemble": restorer.default_ensemble if ensemble is None else bool(ensemble),
            "recompose": restorer.default_recompose if recompose is None else bool(recompose),
            "prior": used_prior, "prior_t": used_prior_t,
            "per_image": rows, "mean": mean}


def _metric_means(rows):
    """Mean of every PSNR / SSIM column of the per-image rows, rounded to 4 decimals."""
    keys = [k for k in rows[0] if k.endswith("psnr") or k.endswith("ssim")] if rows else []
    return {k: round(float(np.mean([r[k] for r in rows])), 4) for k in keys}


def _eval_images(images):
    """(name, clean image) pairs from a folder, a list of folders, or such pairs already."""
    if isinstance(images, (str, Path)):
        images = [images]
    pairs = []
    for item in images:
        if isinstance(item, (str, Path)):
            pairs += [(p.name, read_image(p).rgb) for p in list_images(item)]
        else:
            pairs.append(item)
    return pairs


def evaluate_grid(weights, images, densities=("moderate",), seeds=(0,), save_root=None, **options):
    """``evaluate`` for every (density, seed); returns ``runs`` (each evaluate result) and ``summary``:
    per density, the mean over images × seeds of every PSNR / SSIM column. Images go to
    ``save_root/DENSITY_seedN`` when ``save_root`` is given."""
    from ..restorer import Restorer
    images = _eval_images(images)
    restorer = Restorer(weights=weights, device="cpu")
    runs, summary = [], {}
    for density in densities:
        density_runs = [evaluate(weights, images, density=density, seed=seed, restorer=restorer,
                                 save_dir=None if save_root is None else Path(save_root) / f"{density}_seed{seed}",
                                 **options)
                        for seed in seeds]
        rows = [r for run in density_runs for r in run["per_image"]]
        summary[density] = {**_metric_means(rows), "n": len(rows)}
        runs += density_runs
    return {"weights": str(weights), "seeds": list(seeds), "runs": runs, "summary": summary}


def summary_table(grid):
    """Per-density means of ``evaluate_grid`` as a markdown table."""
    has_dcp = any("dcp_psnr" in m for m in grid["summary"].values())
    lines = _table_head("| haze density | n |", has_dcp, grid["runs"][0])
    lines += [f"| {density} | {m['n']} |" + _metric_cells(m, has_dcp) for density, m in grid["summary"].items()]
    return "\n".join(lines)


def _table_head(first_columns, has_dcp, result):
    """Header and rule of an evaluation table: ``first_columns``, then hazy, DCP and model columns."""
    method = f"{result['sampler']}, {result['steps']} steps"
    if result.get("samples", 1) > 1:
        method += f", mean of {result['samples']} samples"
        if result.get("ensemble"):
            method += " in four orientations"
    if result.get("prior"):
        method += f", from the {result['prior'].upper()} latent at t = {result['prior_t']:g} T"
    if result.get("recompose"):
        method += ", recomposed"
    head = first_columns + " hazy PSNR / SSIM |" + (" DCP PSNR / SSIM |" if has_dcp else "") + \
        f" model ({method}) PSNR / SSIM |"
    return [head, "|" + "---|" * (head.count("|") - 1)]


def _metric_cells(r, has_dcp):
    """The hazy, DCP and model PSNR / SSIM cells of one table row."""
    s = f" {r['hazy_psnr']:.2f} / {r['hazy_ssim']:.3f} |"
    if has_dcp:
        s += f" {r['dcp_psnr']:.2f} / {r['dcp_ssim']:.3f} |"
    return s + f" {r['psnr']:.2f} / {r['ssim']:.3f} |"


def markdown_table(result):
    """The evaluation as a markdown table (PSNR dB / SSIM of hazy input, DCP and the model)."""
    has_dcp = bool(result["per_image"]) and "dcp_psnr" in result["per_image"][0]
    lines = _table_head("| image | size | mean t |", has_dcp, result)
    for r in result["per_image"]:
        lines.append(f"| {r['name']} | {r['size']} | {r['mean_transmission']:.2f} |" + _metric_cells(r, has_dcp))
    lines.append("| **mean** | | |" + _metric_cells(result["mean"], has_dcp))
    return "\n".join(lines)
