"""The ``tilediff`` command line (click)."""
import sys
from pathlib import Path

from ..engine import host_memory

host_memory.configure()   # a program, not a library: tune the allocator before torch loads (host_memory)

import click  # noqa: E402

from .._version import __version__  # noqa: E402
from ..sde import SAMPLERS  # noqa: E402
from ..tasks import TASKS  # noqa: E402


class CliError(click.ClickException):
    """One clear line on stderr and exit status 1."""

    def show(self, file=None):
        click.echo(f"tilediff: error: {self.format_message()}", err=True)


def _fail(message):
    raise CliError(str(message).splitlines()[0] if str(message) else "failed")


class _Main(click.Group):
    """The command group; an interrupt (Ctrl-C) ends any command with one line and exit status 130."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo("\ntilediff: interrupted", err=True)
            ctx.exit(130)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
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
    from ..weights import ModelFileError, describe
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
    from ..weights import ModelFileError, convert, describe
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


def _compression_value(text):
    """--compression as given: digits are a PNG zlib level (0-9), a name a TIFF codec."""
    if text is None:
        return None
    value = text.strip()
    if value.isdigit():
        if int(value) > 9:
            _fail(f"--compression {text}: a PNG zlib level is 0-9 (TIFF takes a codec name: zlib, lzw, zstd, none)")
        return int(value)
    import tifffile
    if value.lower() not in ("zlib", "deflate", "none"):
        try:
            tifffile.COMPRESSION[value.upper()]
        except KeyError:
            _fail(f"--compression {text}: not a PNG level (0-9) nor a TIFF codec name (zlib, lzw, zstd, none, ...)")
    return value


def _header_size(path):
    """(height, width) from the file header only (no pixel decoding); raises ImageReadError."""
    from PIL import Image
    import tifffile
    from ..io import ImageReadError
    path = Path(path)
    try:
        if path.is_dir():
            raise ImageReadError(path, "is a directory, not an image file")
        if path.stat().st_size == 0:
            raise ImageReadError(path, "empty file (0 bytes)")
        with open(path, "rb") as fh:
            head = fh.read(4)
    except ImageReadError:
        raise
    except OSError as e:
        raise ImageReadError(path, f"cannot open ({e.strerror or e})") from e
    try:
        if head in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
            with tifffile.TiffFile(path) as tif:
                page = tif.pages.first
                return int(page.imagelength), int(page.imagewidth)
        with Image.open(path) as im:
            if im.format not in ("PNG", "JPEG"):
                raise ValueError(f"{im.format} is not supported (TIFF, PNG, JPEG)")
            w, h = im.size
            if im.getexif().get(274, 1) in (5, 6, 7, 8):    # EXIF orientation: rotated a quarter turn
                w, h = h, w
            return h, w
    except Exception as e:
        raise ImageReadError(path, f"not a readable image ({' '.join(str(e).split()) or type(e).__name__})") from e


def _plan_text(restorer, sizes, options):
    """engine.make_plan(...).describe() for an image (a pair for stereo) of these (h, w) sizes."""
    from .. import engine
    task = restorer.task
    if task.stereo and sizes[0] != sizes[1]:
        raise ValueError(f"left and right views differ in size: {sizes[0]} vs {sizes[1]}")
    h, w = sizes[0]
    opts = engine.Options(**{k: options[k] for k in ("steps", "sampler", "seed", "tile", "overlap", "mode",
                                                     "memory_budget")}, precision=restorer.precision)
    plan = engine.make_plan(restorer.model, (h * task.upscale, w * task.upscale), 6 if task.stereo else 3, opts,
                            restorer.device)
    return plan.describe()


def _summary_line(entry, device):
    out = entry["output"] if isinstance(entry["output"], str) else ", ".join(entry["output"])
    w, h = entry["size"]
    return f"{out}: {w}x{h}, {entry['seconds']:.1f} s, peak memory {_peak_memory_text(device)}"


@main.command("restore")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--task", required=True, type=click.Choice(sorted(TASKS)), help="Restoration task.")
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path),
              help="Model file (default: the task's shipped weights).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Output file (one input; for stereo-sr OUT_L.EXT and OUT_R.EXT are written).")
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Output folder (default: beside each input file; DIR_TASK beside an input folder DIR).")
@click.option("--steps", type=click.IntRange(min=1), help="Sampler steps (default: the model's T, 100).")
@click.option("--sampler", type=click.Choice(list(SAMPLERS)), default=None,
              help="sde (the reference default), ode or posterior; default: the model file's choice, else sde.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--samples", type=click.IntRange(min=1),
              help="Average the final latents of N reverse runs (posterior mean; N × the sampling time). "
                   "Default: the model file's choice, else 1.")
@click.option("--ensemble/--no-ensemble", default=None,
              help="Run the --samples runs in turn on the latent as it is, flipped, transposed and both, and "
                   "average them. Default: the model file's choice, else off.")
@click.option("--prior", type=click.Choice(["none", "dcp"]), default=None,
              help="dehaze: start each reverse run from the latent of a classic estimate (dcp: dark channel "
                   "prior) at step --prior-t × T instead of from noise; none: from noise. "
                   "Default: the model file's choice, else none.")
@click.option("--prior-t", type=click.FloatRange(0, 1, min_open=True),
              help="Where the runs start from the --prior estimate, as a fraction of the steps "
                   "(default: the model file's choice, else 0.5).")
@click.option("--recompose/--no-recompose", default=None,
              help="dehaze: rebuild the output from the input with the transmission the restored image implies "
                   "(scattering model; the model decides the haze, the input gives the detail). "
                   "Default: the model file's choice, else off.")
@click.option("--mode", type=click.Choice(["auto", "whole", "tiled"]), default="auto", show_default=True,
              help="whole = the reference algorithm on the whole image; tiled = force tiling.")
@click.option("--tile", type=click.IntRange(min=8), help="Tile size (latent units for latent tasks).")
@click.option("--overlap", type=click.IntRange(min=0), help="Tile overlap.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True)
@click.option("--memory-budget", help="Memory budget, e.g. 4GB (default: free device memory).")
@click.option("--cuda-graphs/--no-cuda-graphs", default=True, show_default=True,
              help="CUDA: capture one sampler step as a CUDA graph and replay it for every step.")
@click.option("--src-lens", help="Bokeh: source lens, e.g. Sony50mmf16.0BS or an encoded number (160).")
@click.option("--tgt-lens", help="Bokeh: target lens, e.g. Canon50mmf1.8BS or an encoded number (-18).")
@click.option("--disparity", type=float, help="Bokeh: disparity (the meta file's number).")
@click.option("--jpeg-quality", type=click.IntRange(1, 100), help="JPEG outputs: quality (default 95).")
@click.option("--compression",
              help="TIFF outputs: codec name (zlib, lzw, zstd, none; default the input's); "
                   "PNG outputs: zlib level 0-9 (default 6).")
@click.option("--pattern", default="*", show_default=True, help="Input folders: glob of the file names to take.")
@click.option("--recursive", is_flag=True, help="Input folders: include subfolders (mirrored in the output).")
@click.option("--overwrite", is_flag=True,
              help="Replace existing outputs (folders: redo them instead of skipping them).")
@click.option("--dry-run", is_flag=True, help="Print the plan for each input and exit; nothing is restored or written.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary lines; errors only.")
def restore_cmd(inputs, task, weights, output, out_dir, steps, sampler, seed, samples, ensemble, prior, prior_t,
                recompose, mode, tile, overlap, device,
                precision, memory_budget, cuda_graphs, src_lens, tgt_lens, disparity, jpeg_quality, compression,
                pattern, recursive, overwrite, dry_run, quiet):
    """Restore images (TIFF, PNG, JPEG) or folders of them.

    Outputs are NAME_TASK.EXT beside each input unless -o/--out-dir say otherwise; bit depth, alpha,
    ICC profile and EXIF are kept. stereo-sr takes left/right pairs (two files each, or a folder whose
    views are matched by name: NAME_L/NAME_R, NAME_left/NAME_right, NAME0/NAME1). A folder is restored
    into DIR_TASK (or --out-dir), outputs that exist are skipped so a rerun resumes, and a summary is
    written to tilediff_summary.json there. The exit status is 1 when any input failed, 130 when
    interrupted.
    """
    from ..batch import Job, default_out_dir, error_line, find_jobs, restore_folder, restore_job
    from ..io import output_path
    from ..restorer import Restorer
    from ..weights import ModelFileError

    task_obj = TASKS[task]
    folders = [p for p in inputs if p.is_dir()]
    files = [p for p in inputs if not p.is_dir()]
    if output is not None and (folders or len(files) != (2 if task_obj.stereo else 1)):
        _fail("-o/--output takes one input (a left/right pair for stereo-sr); use --out-dir for several or a folder")
    if task_obj.stereo and len(files) % 2:
        _fail("stereo-sr takes left/right pairs: give an even number of images (left then right), or a folder")
    if task_obj.needs_lens and (src_lens is None or tgt_lens is None or disparity is None):
        _fail("the bokeh task needs --src-lens, --tgt-lens and --disparity (lens names like "
              "Canon50mmf1.8BS → -18, Sony50mmf16.0BS → 160, as in the NTIRE 2023 meta files)")
    if task_obj.needs_lens:
        from ..tasks import lens_value
        try:
            lens_value(src_lens), lens_value(tgt_lens)
        except ValueError as e:
            _fail(e)
    compression = _compression_value(compression)
    budget = _parse_bytes(memory_budget) if memory_budget else None
    if recompose and task_obj.name != "dehaze":
        _fail(f"--recompose applies to dehazing only, not to task {task_obj.name}")
    if prior not in (None, "none") and task_obj.name != "dehaze":
        _fail(f"--prior {prior} applies to dehazing only, not to task {task_obj.name}")
    options = dict(steps=steps, sampler=sampler, seed=seed, samples=samples, ensemble=ensemble, recompose=recompose,
                   prior=prior, prior_t=prior_t, mode=mode, tile=tile, overlap=overlap,
                   memory_budget=budget, cuda_graphs=cuda_graphs, src_lens=src_lens, tgt_lens=tgt_lens,
                   disparity=disparity)
    if device != "auto":
        import torch
        try:
            torch.device(device)
        except RuntimeError:
            _fail(f"--device {device}: not a device (auto, cpu, cuda or cuda:N)")
    try:
        restorer = Restorer(task, weights=weights, device=device, precision=precision)
    except (ModelFileError, ValueError, RuntimeError, OSError) as e:
        _fail(e)

    # file jobs: one per input (a pair for stereo-sr), outputs beside the input, in --out-dir or -o
    step = 2 if task_obj.stereo else 1
    jobs = []
    for i in range(0, len(files), step):
        group = tuple(files[i:i + step])
        if output is not None and task_obj.stereo:
            targets = (output.with_name(f"{output.stem}_L{output.suffix}"),
                       output.with_name(f"{output.stem}_R{output.suffix}"))
        elif output is not None:
            targets = (output,)
        else:
            targets = tuple(output_path(src, task, out_dir) for src in group)
        jobs.append(Job(group, targets))
    folder_outs = [(d, out_dir if out_dir is not None and len(folders) == 1 else
                    out_dir / d.resolve().name if out_dir is not None else default_out_dir(d, task))
                   for d in folders]

    if dry_run:
        failures = 0

        def show(job, note):
            nonlocal failures
            click.echo(f"{job.label} -> {', '.join(map(str, job.outputs))}{note}")
            try:
                click.echo(_indent(_plan_text(restorer, [_header_size(p) for p in job.inputs], options)))
            except Exception as e:
                failures += 1
                click.echo(f"tilediff: error: {error_line(e, job.label)}", err=True)

        for job in jobs:
            exists = any(p.exists() for p in job.outputs) and not overwrite
            show(job, " (exists: use --overwrite)" if exists else "")
        for folder, dest in folder_outs:
            folder_jobs = find_jobs(folder, dest, task, pattern, recursive)
            click.echo(f"{folder}/ -> {dest}/ ({len(folder_jobs)} {'pairs' if task_obj.stereo else 'images'})")
            for job in folder_jobs:
                if job.error:
                    failures += 1
                    click.echo(f"tilediff: error: {job.error}", err=True)
                elif all(p.exists() for p in job.outputs) and not overwrite:
                    click.echo(f"{job.label} -> {', '.join(map(str, job.outputs))} (exists: skipped)")
                else:
                    show(job, "")
        if failures:
            sys.exit(1)
        return

    progress, close = _progress_printer(quiet)
    failures, written = 0, set()
    inputs_resolved = {Path(p).resolve() for p in files}
    try:
        for job in jobs:
            problem = _job_problem(job, inputs_resolved, written, overwrite)
            if problem:
                failures += 1
                click.echo(f"tilediff: error: {problem}", err=True)
                continue
            try:
                entry = restore_job(restorer, job, jpeg_quality=jpeg_quality, compression=compression,
                                    progress=progress, **options)
            except Exception as e:
                close()
                failures += 1
                click.echo(f"tilediff: error: {error_line(e, job.label)}", err=True)
                continue
            close()
            written.update(p.resolve() for p in job.outputs)
            if not quiet:
                click.echo(_summary_line(entry, restorer.device), err=True)

        for folder, dest in folder_outs:
            def on_file(event, entry):
                close()
                if event == "failed":
                    click.echo(f"tilediff: error: {entry['error']}", err=True)
                elif quiet:
                    pass
                elif event == "succeeded":
                    click.echo(_summary_line(entry, restorer.device), err=True)
                elif event == "skipped":
                    click.echo(f"skipped {entry['input']}: output exists (--overwrite redoes it)", err=True)
            try:
                summary = restore_folder(folder, dest, task=task, restorer=restorer, pattern=pattern,
                                         recursive=recursive, skip_existing=not overwrite, jpeg_quality=jpeg_quality,
                                         compression=compression, on_file=on_file, progress=progress, **options)
            except (OSError, ValueError) as e:
                failures += 1
                click.echo(f"tilediff: error: {error_line(e, folder)}", err=True)
                continue
            counts = summary["counts"]
            failures += counts["failed"]
            if not quiet:
                click.echo(f"{folder}: {counts['succeeded']} restored, {counts['failed']} failed, "
                           f"{counts['skipped']} skipped; summary in {summary['summary_path']}", err=True)
    finally:
        close()
    if failures:
        if len(jobs) + len(folders) > 1 and not quiet:
            click.echo(f"tilediff: {failures} input(s) failed", err=True)
        sys.exit(1)


def _job_problem(job, inputs, written, overwrite):
    """Why a file job must not run (one line naming the file), or None."""
    from ..io import SUPPORTED_EXTENSIONS, is_image_file
    for src in job.inputs:
        if src.is_file() and not is_image_file(src):
            return (f"{src}: unsupported file type {src.suffix or '(no extension)'}: tilediff reads and writes "
                    f"TIFF, PNG and JPEG ({' '.join(SUPPORTED_EXTENSIONS)})")
    if len({dst.resolve() for dst in job.outputs}) < len(job.outputs):
        return f"{job.outputs[0]}: the left and right views would be written to the same file; use -o"
    for dst in job.outputs:
        if dst.resolve() in inputs:
            return f"{dst}: refusing to overwrite an input"
        if dst.resolve() in written:
            return f"{dst}: already written for an earlier input of this run"
        if dst.exists() and not overwrite:
            return f"{dst}: exists (use --overwrite to replace it)"
    return None


def _indent(text):
    return "\n".join("  " + line for line in text.splitlines())


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


@main.command("bench", context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                         "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench_cmd(args):
    """Memory and latency benchmarks: runs `python -m benchmarks ARGS` (try `tilediff bench --help`).

    The suite lives in the repository's benchmarks/ folder (it is not installed with the package), so
    this works from a source checkout, e.g. after `pip install -e .`.
    """
    import subprocess
    root = Path(__file__).resolve().parents[2]
    if not (root / "benchmarks" / "__main__.py").exists():
        _fail(f"tilediff bench needs a source checkout: {root / 'benchmarks'} does not exist "
              "(clone the repository, `pip install -e .`, then run it again)")
    runner = ("import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); sys.argv[0] = 'tilediff bench'; "
              "runpy.run_module('benchmarks', run_name='__main__', alter_sys=True)")
    sys.exit(subprocess.call([sys.executable, "-c", runner, str(root), *args]))


# ---- commands defined in other modules -------------------------------------------------------
# `tilediff train` and `tilediff eval` live in train_cli.py; they are registered here, guarded so that
# restore/convert/info keep working where the training module (or its dependencies) is missing.
try:
    from .train import eval_cmd, train_cmd
except ImportError:
    pass
else:
    main.add_command(train_cmd)
    main.add_command(eval_cmd)


if __name__ == "__main__":
    main()
