"""``tilediff train`` and ``tilediff eval``: the training stages and the evaluation of a model file."""
import json
import shlex
import sys
from pathlib import Path

import click

from .. import sde as _sde


def _ints(text):
    try:
        return [int(v) for v in str(text).replace(" ", "").split(",") if v]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}") from None


def _command_line():
    """The command as typed (its non-default options), for the model file's training metadata."""
    ctx = click.get_current_context()
    parts = ["tilediff", ctx.command.name]
    for p in ctx.command.params:
        value = ctx.params.get(p.name)
        if value is None or value is False or value == p.default or not isinstance(p, click.Option):
            continue
        opt = max(p.opts, key=len)
        parts += [opt] if p.is_flag else [opt, str(value)]
    return shlex.join(parts)


@click.command("train")
@click.option("--task", default="dehaze", show_default=True, help="Task whose network variant and SDE to train.")
@click.option("--clean", type=click.Path(file_okay=False, exists=True), help="Clean images, hazed on the fly.")
@click.option("--lq", type=click.Path(file_okay=False, exists=True), help="Degraded images (paired with --gt by name).")
@click.option("--gt", type=click.Path(file_okay=False, exists=True), help="Ground-truth images.")
@click.option("--density", default="moderate", show_default=True,
              help="Synthetic haze density (with --clean): light, moderate, dense, or a comma-separated mix "
                   "(each hazed window draws one).")
@click.option("--stage", default="both", show_default=True, type=click.Choice(["compressor", "noise", "both"]))
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False),
              help="Output: the compressor file (--stage compressor) or the model file.")
@click.option("--compressor", "compressor_file", type=click.Path(dir_okay=False, exists=True),
              help="Trained compressor for --stage noise (default: STATE_DIR/compressor.safetensors).")
@click.option("--iters", type=int, help="Iterations of the chosen stage(s).")
@click.option("--compressor-iters", type=int, help="Iterations of the compressor stage (overrides --iters).")
@click.option("--noise-iters", type=int, help="Iterations of the noise stage (overrides --iters).")
@click.option("--batch", default=8, show_default=True, type=int)
@click.option("--crop", default=128, show_default=True, type=int, help="Crop size of the compressor stage (px).")
@click.option("--noise-crop", default=256, show_default=True, type=int, help="Crop size of the noise stage (px).")
@click.option("--optimizer", default="adamw", show_default=True, type=click.Choice(["lion", "adamw"]),
              help="Compressor optimizer.")
@click.option("--noise-optimizer", default="lion", show_default=True, type=click.Choice(["lion", "adamw"]))
@click.option("--lr", default=1e-3, show_default=True, type=float, help="Compressor learning rate.")
@click.option("--noise-lr", default=1e-4, show_default=True, type=float)
@click.option("--min-lr", default=1e-7, show_default=True, type=float, help="End of the cosine schedule.")
@click.option("--warmup", default=50, show_default=True, type=int)
@click.option("--weight-decay", default=0.0, show_default=True, type=float)
@click.option("--latent-weight", default=0.1, show_default=True, type=float,
              help="Weight of the latent regulariser (reference 0.001).")
@click.option("--skip-dropout", default=0.0, show_default=True, type=float,
              help="Fraction of compressor samples decoded without their LQ skips (0 = the reference loss).")
@click.option("--noise-loss", default="mle", show_default=True, type=click.Choice(["mle", "x0", "mle+x0"]),
              help="Noise-stage loss: the reference's IR-SDE MLE, the capped x̂0 error, or both (see tilediff.training.losses).")
@click.option("--x0-cap", default=1.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Cap of the x̂0 loss: ε errors weighted by min(w_t, cap) (tilediff.training.losses.x0_loss).")
@click.option("--late-steps", default=0, show_default=True, type=click.IntRange(min=0),
              help="> 0: half of each batch draws its step from LATE_STEPS..T instead of 1..T (the steps where a "
                   "run from noise decides the haze).")
@click.option("--dcp-start-fraction", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="Dehaze: that fraction of each batch is drawn around the dark channel prior's latent at step "
                   "--dcp-start-t x T, the state the default DCP start gives (tilediff.training.losses.PriorStart).")
@click.option("--dcp-start-t", default=0.5, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="The step of --dcp-start-fraction, as a fraction of T (the restore option --prior-t).")
@click.option("--init-noise", type=click.Path(dir_okay=False, exists=True),
              help="Start the noise network from this model file's (fine-tuning; same network settings).")
@click.option("--ema-decay", default=0.995, show_default=True, type=float)
@click.option("--ema-every", default=10, show_default=True, type=int)
@click.option("--no-ema", is_flag=True, help="Save the raw weights instead of the EMA.")
@click.option("--max-sigma", type=float, help="SDE max_sigma for the model file (default: the task's).")
@click.option("--ch", default=8, show_default=True, type=int, help="Compressor base channels.")
@click.option("--ch-mult", default="2,4,4,8", show_default=True, help="Compressor channel multipliers.")
@click.option("--embed-dim", default=8, show_default=True, type=int, help="Latent channels.")
@click.option("--width", default=24, show_default=True, type=int, help="Noise network width.")
@click.option("--enc-blocks", default="1,1,1,2", show_default=True)
@click.option("--middle-blocks", default=1, show_default=True, type=int)
@click.option("--dec-blocks", default="1,1,1,1", show_default=True)
@click.option("--prediction", default="eps", show_default=True, type=click.Choice(["eps", "x0"]),
              help="What the noise network's last layer predicts: ε (the reference) or, preconditioned, x0 "
                   "(tilediff.models.nafnet.ConditionalNAFNet; good first estimates from noise).")
@click.option("--sigma-data", default=0.15, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="With --prediction x0: the spread of x0 - mu in the latent (the preconditioning's s).")
@click.option("--no-permute", is_flag=True, help="Do not permute RGB channels of clean images.")
@click.option("--haze-refresh", default=2, show_default=True, type=int,
              help="Hazed windows renewed per step in the crop pool (with --clean).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--threads", default=1, show_default=True, type=int, help="torch threads (0: torch's default).")
@click.option("--device", default="cpu", show_default=True,
              help="Where the networks train: cpu, cuda (cuda:N) or auto (the batches are made on the CPU).")
@click.option("--state-dir", type=click.Path(file_okay=False),
              help="Checkpoints (default: .train_state/<out name>).")
@click.option("--augment", is_flag=True,
              help="With --clean: also rescale (0.5-1x) and tone-jitter the clean images before hazing.")
@click.option("--haze-v2", is_flag=True,
              help="With --clean: haze with tilediff.tasks.dehaze.haze.add_haze_v2 (tinted, spatially varying "
                   "airlight; depth from smooth fields and image cues) instead of add_haze.")
@click.option("--clear-fraction", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="With --clean: fraction of the hazed windows left haze-free (input = target).")
@click.option("--scale-range", default=None,
              help="With --clean: LO,HI (0 < LO <= HI <= 1): cut each window at a random scale in [LO, HI] "
                   "(log-uniform; a region of window/scale px box-downscaled), for large photos. Default: off.")
@click.option("--save-every", default=200, show_default=True, type=int, help="Checkpoint every N steps.")
@click.option("--resume", is_flag=True, help="Continue from the checkpoints in the state folder.")
@click.option("--no-progress", is_flag=True)
def train_cmd(task, clean, lq, gt, density, stage, out, compressor_file, iters, compressor_iters, noise_iters,
              batch, crop, noise_crop, optimizer, noise_optimizer, lr, noise_lr, min_lr, warmup, weight_decay,
              latent_weight, skip_dropout, noise_loss, x0_cap, late_steps, dcp_start_fraction, dcp_start_t,
              init_noise, ema_decay, ema_every, no_ema, max_sigma, ch, ch_mult, embed_dim, width, enc_blocks,
              middle_blocks, dec_blocks, prediction, sigma_data, no_permute, haze_refresh, seed, threads, device,
              state_dir, augment, haze_v2, clear_fraction, scale_range, save_every, resume, no_progress):
    """Train a latent Refusion model (compressor, then noise network) from paired or clean images.

    \b
    tilediff train --task dehaze --clean photos/ --out dehaze.safetensors --compressor-iters 900 --noise-iters 8000
    tilediff train --task dehaze --lq hazy/ --gt clean/ --stage noise --compressor comp.safetensors -o model.safetensors
    """
    from .. import training as T
    from ..tasks import get_task
    from ..training.data import parse_scale_range
    try:
        task_obj = get_task(task)
    except ValueError as e:
        raise click.UsageError(str(e))
    if not task_obj.latent or task_obj.variant != "latent":
        raise click.UsageError(f"training is implemented for latent tasks with the 'latent' network (dehaze), "
                               f"not {task}")
    if not clean and not (lq and gt):
        raise click.UsageError("give --clean DIR, or both --lq DIR and --gt DIR")
    from ..restorer import resolve_device
    try:
        resolve_device(device)
    except (ValueError, RuntimeError) as e:
        raise click.BadParameter(str(e).splitlines()[0], param_hint="--device")
    try:
        scale_range = parse_scale_range(scale_range)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--scale-range")
    sde_cfg = dict(task_obj.sde)
    if max_sigma is not None:
        sde_cfg["max_sigma"] = max_sigma
    state_dir = state_dir or str(Path(".train_state") / Path(out).stem)
    common = dict(batch=batch, min_lr=min_lr, warmup=warmup, weight_decay=weight_decay, ema_decay=ema_decay,
                  ema_every=ema_every, use_ema=not no_ema, save_every=save_every)
    cfg = T.TrainConfig(
        task=task_obj.name, clean=clean, lq=lq, gt=gt, density=density, permute_channels=not no_permute,
        haze_refresh=haze_refresh, augment=augment, scale_range=scale_range, haze_v2=haze_v2,
        clear_fraction=clear_fraction,
        compressor_config={"in_ch": 3, "out_ch": 3, "ch": ch, "ch_mult": _ints(ch_mult), "embed_dim": embed_dim},
        noise_config={"img_channel": embed_dim, "width": width, "enc_blk_nums": _ints(enc_blocks),
                      "middle_blk_num": middle_blocks, "dec_blk_nums": _ints(dec_blocks),
                      **({"prediction": "x0", "sigma_data": sigma_data} if prediction == "x0" else {})},
        sde=sde_cfg, latent_weight=latent_weight, skip_dropout=skip_dropout,
        noise_loss=noise_loss, x0_cap=x0_cap, late_steps=late_steps, dcp_start_fraction=dcp_start_fraction,
        dcp_start_t=dcp_start_t, init_noise=init_noise,
        compressor=T.StageConfig(iters=compressor_iters or iters or 1000, crop=crop, optimizer=optimizer, lr=lr,
                                 **common),
        noise=T.StageConfig(iters=noise_iters or iters or 5000, crop=noise_crop, optimizer=noise_optimizer,
                            lr=noise_lr, **common),
        seed=seed, device=device, threads=threads or None, state_dir=state_dir, progress=not no_progress,
        command=_command_line())
    try:
        if stage == "noise":
            comp = compressor_file or Path(state_dir) / "compressor.safetensors"
            if not Path(comp).exists():
                raise click.UsageError(f"--stage noise needs a trained compressor: pass --compressor FILE "
                                       f"({comp} does not exist)")
            path = T.train_noise(cfg, comp, out, resume=resume)[0]
        else:
            path = T.train(cfg, out, stage=stage, resume=resume)
    except KeyboardInterrupt:
        click.echo(f"interrupted; checkpoints are in {state_dir} (continue with --resume)", err=True)
        sys.exit(130)
    except (ValueError, FloatingPointError) as e:
        raise click.ClickException(str(e))
    click.echo(f"wrote {path} (checkpoints in {state_dir})")


@click.command("eval")
@click.option("--weights", required=True, type=click.Path(dir_okay=False, exists=True), help="Model file.")
@click.option("--clean", required=True, multiple=True, type=click.Path(file_okay=False, exists=True),
              help="Folder of clean test images (repeatable).")
@click.option("--density", default="moderate", show_default=True,
              help="Haze density: light, moderate, dense, or a comma-separated list (one table row each).")
@click.option("--seed", default="0", show_default=True,
              help="Haze and sampler seed, or a comma-separated list (means over images × seeds).")
@click.option("--steps", type=int, help="Sampler steps (default: the model's T).")
@click.option("--sampler", type=click.Choice(list(_sde.SAMPLERS)),
              help="Sampler (default: the model file's default_sampler, else sde).")
@click.option("--samples", type=click.IntRange(min=1),
              help="Average N reverse runs per image (default: the model file's choice, else 1).")
@click.option("--ensemble/--no-ensemble", default=None,
              help="Run the N runs in four orientations of the latent (default: the model file's choice, else off).")
@click.option("--prior", type=click.Choice(["none", "dcp"]), default=None,
              help="Start the runs from the dark-channel-prior latent at --prior-t × T (default: the model file's "
                   "choice, else none).")
@click.option("--prior-t", type=click.FloatRange(0, 1, min_open=True),
              help="Start of the --prior runs as a fraction of the steps (default: the model file's, else 0.5).")
@click.option("--recompose/--no-recompose", default=None,
              help="Rebuild each output from the hazy input with the transmission it implies "
                   "(default: the model file's choice, else off).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the results as JSON.")
@click.option("--save-images", type=click.Path(file_okay=False),
              help="Write hazy, DCP and restored PNGs here (in DENSITY_seedN subfolders for several runs).")
@click.option("--no-dcp", is_flag=True, help="Skip the dark channel prior baseline.")
@click.option("--threads", type=int, help="torch threads.")
@click.option("--store", is_flag=True, help="Store the results as the model file's `quality` metadata.")
def eval_cmd(weights, clean, density, seed, steps, sampler, samples, ensemble, prior, prior_t, recompose, json_out,
             save_images, no_dcp, threads, store):
    """Haze clean images deterministically, restore them and report PSNR/SSIM (hazy, DCP, model).

    \b
    One density and seed: a per-image table. Several (e.g. --density light,moderate,dense --seed 0,1,2):
    one row per density, each the mean over the images and seeds; --json keeps every per-image value.
    """
    from .. import training as T
    seeds = _ints(seed)
    try:
        densities = T.parse_densities(density)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--density")
    if not seeds:
        raise click.BadParameter("give at least one seed", param_hint="--seed")
    options = dict(steps=steps, sampler=sampler, samples=samples, ensemble=ensemble, recompose=recompose,
                   prior=prior, prior_t=prior_t, baseline=not no_dcp)
    try:
        if len(densities) == 1 and len(seeds) == 1:
            result = T.evaluate(weights, list(clean), density=densities[0], seed=seeds[0], save_dir=save_images,
                                threads=threads, **options)
            click.echo(T.markdown_table(result))
        else:
            result = T.evaluate_grid(weights, list(clean), densities, seeds, threads=threads,
                                     save_root=save_images, **options)
            click.echo(T.summary_table(result))
    except ValueError as e:
        raise click.ClickException(str(e))
    if json_out:
        Path(json_out).write_text(json.dumps(result, indent=2))
    if store:
        quality = {k: v for k, v in result.items() if k != "weights"}
        if "runs" in quality:   # the model file keeps the means; --json keeps every per-image value
            first = result["runs"][0]
            quality = {"summary": result["summary"], "seeds": seeds, "sampler": first["sampler"],
                       "steps": first["steps"], "samples": first["samples"], "ensemble": first["ensemble"],
                       "recompose": first["recompose"], "prior": first["prior"], "prior_t": first["prior_t"],
                       "images": [r["name"] for r in first["per_image"]]}
        T.update_metadata(weights, quality=quality)
        click.echo(f"stored the results in {weights} (metadata `quality`)")
