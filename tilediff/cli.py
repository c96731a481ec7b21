"""The ``tilediff`` command line (click)."""
import json
import sys
import time
from pathlib import Path

import click

from . import __version__
from .tasks import TASKS


class CliError(click.ClickException):
    """One clear line on stderr and exit status 1."""

    def show(self, file=None):
        click.echo(f"tilediff: error: {self.format_message()}", err=True)


def _fail(message):
    raise CliError(str(message).splitlines()[0] if str(message) else "failed")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tilediff")
def main():
    """tilediff: tiled large-image restoration with Refusion (latent IR-SDE)."""


@main.command("tasks")
def tasks_cmd():
    """List the restoration tasks and whether weights are shipped for them."""
    for task in TASKS.values():
        shipped = "shipped weights" if task.shipped_weights() else "needs --weights"
        space = "latent" if task.latent else "pixel"
        click.echo(f"{task.name:10} {task.variant:7} {space:6} {shipped:16} {task.description}")


@main.command("info")
@click.argument("model_file", type=click.Path(dir_okay=False, path_type=Path))
def info_cmd(model_file):
    """Print what a model file holds."""
    from .weights import ModelFileError, describe
    try:
        click.echo(describe(model_file))
    except ModelFileError as e:
        _fail(e)


@main.command("convert")
@click.argument("noise_checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--compressor", "compressor", type=click.Path(dir_okay=False, path_type=Path),
              help="The compressor (U-Net) checkpoint of a latent task (dehaze, bokeh).")
@click.option("--task", type=click.Choice(sorted(TASKS)), help="Task; inferred from the network when omitted.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Model file to write (default: NOISE_CHECKPOINT with .safetensors).")
@click.option("--description", default="", help="Free text stored in the metadata.")
def convert_cmd(noise_checkpoint, compressor, task, output, description):
    """Convert reference .pth checkpoints into one tilediff model file."""
    from .weights import ModelFileError, convert, describe
    try:
        path = convert(noise_checkpoint, compressor, task=task, output=output, description=description)
    except ModelFileError as e:
        _fail(e)
    click.echo(f"wrote {path}")
    click.echo(describe(path))


def _progress_printer(quiet):
    """A progress callback drawing one tqdm bar per stage; None when quiet."""
    if quiet:
        return None, lambda: None
    from tqdm import tqdm
    state = {"bar": None, "stage": None}

    def progress(stage, done, total):
        """One bar, restarted for each stage; the sample stage counts tile-batches × steps."""
        bar = state["bar"]
        if bar is None or state["stage"] != stage:
            if bar is not None:
                bar.close()
            unit = "tile-step" if stage == "sample" else "tile"
            bar = state["bar"] = tqdm(total=total, desc=f"{stage:16}", unit=unit, leave=False, file=sys.stderr,
                                      dynamic_ncols=True)
            state["stage"] = stage
        bar.total = total
        bar.update(done - bar.n)

    def close():
        if state["bar"] is not None:
            state["bar"].close()
            state["bar"] = None
    return progress, close


@main.command("restore")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--task", required=True, type=click.Choice(sorted(TASKS)), help="Restoration task.")
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path),
              help="Model file (default: the task's shipped weights).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Output file (one input).")
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
@click.option("--steps", type=click.IntRange(min=1), help="Sampler steps (default: the model's T, 100).")
@click.option("--sampler", type=click.Choice(["sde", "ode", "posterior"]), default="sde", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--mode", type=click.Choice(["auto", "whole", "tiled"]), default="auto", show_default=True,
              help="whole = the reference algorithm on the whole image; tiled = force tiling.")
@click.option("--tile", type=click.IntRange(min=8), help="Tile size (latent units for latent tasks).")
@click.option("--overlap", type=click.IntRange(min=0), help="Tile overlap.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True)
@click.option("--memory-budget", help="Memory budget, e.g. 4GB (default: free device memory).")
@click.option("--src-lens", help="Bokeh: source lens, e.g. Sony50mmf16.0BS or an encoded number (160).")
@click.option("--tgt-lens", help="Bokeh: target lens, e.g. Canon50mmf1.8BS or an encoded number (-18).")
@click.option("--disparity", type=float, help="Bokeh: disparity (the meta file's number).")
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def restore_cmd(inputs, task, weights, output, out_dir, steps, sampler, seed, mode, tile, overlap, device,
                precision, memory_budget, src_lens, tgt_lens, disparity, overwrite, quiet):
    """Restore images (PNG, TIFF, JPEG)."""
    from .io import ImageReadError, ImageWriteError, output_path, read_image, write_image
    from .restorer import Restorer
    from .weights import ModelFileError

    task_obj = TASKS[task]
    if output is not None and len(inputs) != (2 if task_obj.stereo else 1):
        _fail("-o/--output takes one input (a left/right pair for stereo-sr); use --out-dir for several")
    if task_obj.needs_lens and (src_lens is None or tgt_lens is None or disparity is None):
        _fail("the bokeh task needs --src-lens, --tgt-lens and --disparity (lens names like "
              "Canon50mmf1.8BS → -18, Sony50mmf16.0BS → 160, as in the NTIRE 2023 meta files)")
    budget = _parse_bytes(memory_budget) if memory_budget else None
    try:
        restorer = Restorer(task, weights=weights, device=device, precision=precision)
    except (ModelFileError, ValueError) as e:
        _fail(e)
    groups = [tuple(inputs[i:i + 2]) for i in range(0, len(inputs), 2)] if task_obj.stereo else [(p,) for p in inputs]
    if task_obj.stereo and any(len(g) != 2 for g in groups):
        _fail("stereo-sr takes left/right pairs: give an even number of images (left then right)")
    failures = 0
    for group in groups:
        targets = [output if output and len(group) == 1 else None for _ in group]
        if output and task_obj.stereo:
            targets = [output.with_name(f"{output.stem}_L{output.suffix}"), output.with_name(f"{output.stem}_R{output.suffix}")]
        targets = [t or output_path(src, task, out_dir) for t, src in zip(targets, group)]
        try:
            for src, dst in zip(group, targets):
                if dst.resolve() == Path(src).resolve():
                    raise ValueError(f"{dst}: refusing to overwrite the input")
                if dst.exists() and not overwrite:
                    raise ValueError(f"{dst}: exists (use --overwrite to replace it)")
            images = [read_image(src) for src in group]
            progress, close = _progress_printer(quiet)
            start = time.perf_counter()
            try:
                result = restorer.restore(images[0].rgb if len(images) == 1 else tuple(i.rgb for i in images),
                                          steps=steps, sampler=sampler, seed=seed, mode=mode, tile=tile,
                                          overlap=overlap, memory_budget=budget, src_lens=src_lens,
                                          tgt_lens=tgt_lens, disparity=disparity, progress=progress)
            finally:
                close()
            results = result if task_obj.stereo else (result,)
            for image, out, dst in zip(images, results, targets):
                write_image(dst, out, like=image)
            elapsed = time.perf_counter() - start
            h, w = results[0].shape[:2]
            if not quiet:
                click.echo(f"{', '.join(map(str, targets))}: {w}x{h}, {elapsed:.1f} s, "
                           f"peak memory {_peak_memory_text(restorer.device)}", err=True)
        except (ImageReadError, ImageWriteError, ValueError, ModelFileError) as e:
            failures += 1
            click.echo(f"tilediff: error: {str(e).splitlines()[0]}", err=True)
    if failures:
        sys.exit(1)


def _parse_bytes(text):
    units = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "M": 1 << 20, "MB": 1 << 20, "G": 1 << 30, "GB": 1 << 30}
    t = text.strip().upper().replace("IB", "B")
    number = t.rstrip("KMGB")
    unit = t[len(number):]
    try:
        return int(float(number) * units[unit])
    except (ValueError, KeyError):
        _fail(f"cannot read memory budget {text!r}: use a number with KB, MB or GB")


def _peak_memory_text(device):
    import resource
    import torch
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    text = f"{rss / 2**30:.2f} GB host"
    if device.type == "cuda":
        text += f", {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GB device"
    return text


if __name__ == "__main__":
    main()
