"""``tilediff restore``: images and folders, with one RestoreOptions built from the options given."""
import re
import sys
import time
from pathlib import Path

import click

from ..batch import (Job, TempSweeper, check_job_outputs, default_out_dir, error_line, find_jobs, restore_folder,
                     restore_job)
from ..io import SUPPORTED_EXTENSIONS, check_compression, is_image_file, output_path, read_size
from ..io.atomic import real_path
from ..options import SAMPLERS
from ..tasks import TASKS
from ..tasks.dehaze.options import PRIORS
from .common import fail, indent, peak_memory_text, progress_printer, warn


@click.command("restore")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--task", required=True, type=click.Choice(sorted(TASKS)), help="Restoration task.")
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path),
              help="Model file (default: the task's shipped weights).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Output file (one input; for stereo-sr OUT_L.EXT and OUT_R.EXT are written).")
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Output folder (default: beside each input file; DIR_TASK beside an input folder DIR).")
@click.option("--steps", type=click.IntRange(min=1),
              help="Network evaluations per reverse run, on the model's own schedule (at most its T; "
                   "default: T, 100).")
@click.option("--sampler", type=click.Choice(list(SAMPLERS)), default=None,
              help="sde (the reference default), ode, posterior or mrs; default: the model file's choice, else sde.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--samples", type=click.IntRange(min=1),
              help="Average the final latents of N reverse runs (posterior mean; N × the sampling time). "
                   "Default: the model file's choice, else 1.")
@click.option("--ensemble/--no-ensemble", default=None,
              help="Run the --samples runs in turn on the latent as it is, flipped, transposed and both, and "
                   "average them. Default: the model file's choice, else off.")
@click.option("--prior", type=click.Choice(["none", *PRIORS]), default=None,
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
@click.option("--memory-budget",
              help="Memory budget: a positive number with a unit B, KB, MB, GB or TB (powers of 1024; KiB, MiB, "
                   "GiB, TiB and K, M, G, T mean the same; no unit: bytes), e.g. 4GB or 1.5G, at least 64MB "
                   "(default: free device memory; on the CPU half the available memory, at most 4 GB).")
@click.option("--cuda-graphs/--no-cuda-graphs", default=True, show_default=True,
              help="CUDA: capture one sampler step as a CUDA graph and replay it for every step.")
@click.option("--src-lens", help="Bokeh: source lens, e.g. Sony50mmf16.0BS or an encoded number (160).")
@click.option("--tgt-lens", help="Bokeh: target lens, e.g. Canon50mmf1.8BS or an encoded number (-18).")
@click.option("--disparity", type=float, help="Bokeh: disparity (the meta file's number).")
@click.option("--jpeg-quality", type=click.IntRange(1, 100), help="JPEG outputs: quality (default 95).")
@click.option("--compression",
              help="TIFF outputs: codec name (zlib, lzw, zstd, none, ...; default the input's; one that cannot be "
                   "written here is refused before any work); PNG outputs: zlib level 0-9 (default 6).")
@click.option("--pattern", default="*", show_default=True, help="Input folders: glob of the file names to take.")
@click.option("--recursive", is_flag=True, help="Input folders: include subfolders (mirrored in the output).")
@click.option("--overwrite", is_flag=True,
              help="Replace existing outputs (folders: redo them instead of skipping them).")
@click.option("--dry-run", is_flag=True, help="Print the plan for each input and exit; nothing is restored or written.")
@click.option("--ray", "ray_address", metavar="local|auto|ADDRESS",
              help="Input folders: distribute the files over Ray workers (pip install 'tilediff[cluster]'): local "
                   "starts Ray on this machine, auto joins the cluster it belongs to, or a cluster address "
                   "(HOST:6379). Paths must mean the same on every node.")
@click.option("--workers", type=click.IntRange(min=1),
              help="With --ray: the number of workers (default: one per GPU, or the CPUs shared 4 threads each).")
@click.option("--gpus-per-worker", type=click.FloatRange(min=0),
              help="With --ray: the share of a GPU each worker holds (default 1 when the cluster has GPUs; "
                   "0.5 puts two workers on each GPU, one decoding while the other computes; 0: CPU workers).")
@click.option("-q", "--quiet", is_flag=True,
              help="No progress bar and no summary lines: errors, and warnings about the data, only.")
def restore_cmd(inputs, task, weights, output, out_dir, device, precision, jpeg_quality, compression, pattern,
                recursive, overwrite, dry_run, quiet, ray_address, workers, gpus_per_worker, **restore_options):
    """Restore images (TIFF, PNG, JPEG) or folders of them.

    Outputs are NAME_TASK.EXT beside each input unless -o/--out-dir say otherwise (.tif .tiff .png
    .jpg .jpeg only); bit depth, alpha, ICC profile and EXIF are kept. stereo-sr takes left/right
    pairs (two files each, or a folder whose views are matched by name: NAME_L/NAME_R,
    NAME_left/NAME_right, NAME0/NAME1). A folder is restored into DIR_TASK (or --out-dir), outputs that
    exist are skipped so a rerun resumes, and a summary is written to tilediff_summary.json there.
    Multi-page TIFFs and animated PNGs are refused; inputs must be regular files.

    \b
    Exit status: 0 every input restored; 1 an input failed or the command cannot run (a wrong model
    file or option value, a full disk); 2 a malformed command line (an unknown option, a value of the
    wrong type, -o with --out-dir); 130 interrupted (Ctrl-C, SIGINT); 143 terminated (SIGTERM).
    Either interrupt leaves no partial output and no temporary file.
    """
    from ..options import RestoreOptions
    from ..restorer import Restorer
    from ..weights import ModelFileError

    started = time.time()
    task_obj = TASKS[task]
    if output is not None and out_dir is not None:
        raise click.UsageError("-o/--output names the output file and --out-dir its folder: give one of them")
    folders = [p for p in inputs if p.is_dir()]
    files = [p for p in inputs if not p.is_dir()]
    if output is not None and (folders or len(files) != (2 if task_obj.stereo else 1)):
        fail("-o/--output takes one input (a left/right pair for stereo-sr); use --out-dir for several or a folder")
    if task_obj.stereo and len(files) % 2:
        fail("stereo-sr takes left/right pairs: give an even number of images (left then right), or a folder")
    compression = _compression_value(compression)
    jobs = _file_jobs(task_obj, files, output, out_dir)
    if not dry_run:   # an output that cannot be written: said before the model is loaded
        problems = _job_problems(jobs, files, overwrite)
        if len(problems) == len(jobs) and jobs and not folders:
            for line in problems.values():
                click.echo(f"tilediff: error: {line}", err=True)
            sys.exit(1)
    cluster = _cluster_options(ray_address, workers, gpus_per_worker, folders, device)
    try:
        options = RestoreOptions.build(task_obj, **restore_options)
    except ValueError as e:
        fail(_as_flags(str(e), restore_options))
    if device != "auto":
        import torch
        try:
            torch.device(device)
        except RuntimeError:
            fail(f"--device {device}: not a device (auto, cpu, cuda or cuda:N)")
    try:
        # with --ray and folders only, the workers restore: this process needs the model file's facts only
        restorer = Restorer(task, weights=weights, device="cpu" if cluster and not files else device,
                            precision=precision)
    except (ModelFileError, ValueError, RuntimeError, OSError) as e:
        fail(e)
    try:
        options = restorer.options(options)
    except ValueError as e:
        fail(_as_flags(str(e), restore_options))

    folder_outs = [(d, out_dir if out_dir is not None and len(folders) == 1 else
                    out_dir / d.resolve().name if out_dir is not None else default_out_dir(d, task))
                   for d in folders]
    if dry_run:
        failures = _dry_run(restorer, options, jobs, folder_outs, pattern, recursive, overwrite)
    else:
        writer = dict(jpeg_quality=jpeg_quality, compression=compression)
        failures = _restore_all(restorer, options, jobs, folder_outs, files, pattern, recursive, overwrite, quiet,
                                writer, cluster, started)
    if failures:
        if not dry_run and len(jobs) + len(folders) > 1 and not quiet:
            click.echo(f"tilediff: {failures} input(s) failed", err=True)
        sys.exit(1)


def _cluster_options(ray_address, workers, gpus_per_worker, folders, device):
    """restore_folder's Ray arguments from --ray, --workers and --gpus-per-worker ({} without --ray)."""
    if ray_address is None:
        for flag, value in (("--workers", workers), ("--gpus-per-worker", gpus_per_worker)):
            if value is not None:
                fail(f"{flag} sets up Ray workers: give --ray local|auto|ADDRESS too")
        return {}
    if not folders:
        fail("--ray distributes the files of input folders: give a folder (single files are restored here)")
    import importlib.util
    if importlib.util.find_spec("ray") is None:
        fail("--ray needs Ray: pip install 'tilediff[cluster]'")
    return dict(ray=ray_address, workers=workers, gpus_per_worker=gpus_per_worker, device=device)


def _as_flags(message, names):
    """An options error in command-line words: each option name (src_lens) as its flag (--src-lens)."""
    for name in sorted(names, key=len, reverse=True):
        message = re.sub(rf"(?<![\w-]){name}(?![\w-])", "--" + name.replace("_", "-"), message)
    return message


def _file_jobs(task, files, output, out_dir):
    """One job per input file (a pair for stereo-sr): outputs beside the input, in --out-dir or -o."""
    step = 2 if task.stereo else 1
    jobs = []
    for i in range(0, len(files), step):
        group = tuple(files[i:i + step])
        if output is not None and task.stereo:
            targets = (output.with_name(f"{output.stem}_L{output.suffix}"),
                       output.with_name(f"{output.stem}_R{output.suffix}"))
        elif output is not None:
            targets = (output,)
        else:
            targets = tuple(output_path(src, task.name, out_dir) for src in group)
        jobs.append(Job(group, targets))
    return jobs


def _dry_run(restorer, options, jobs, folder_outs, pattern, recursive, overwrite):
    """Print each input's plan from its header alone; returns the number of inputs that failed."""
    failures = 0

    def show(job, note):
        nonlocal failures
        click.echo(f"{job.label} -> {', '.join(map(str, job.outputs))}{note}")
        try:
            click.echo(indent(_plan_text(restorer, [read_size(p) for p in job.inputs], options)))
        except Exception as e:
            failures += 1
            click.echo(f"tilediff: error: {error_line(e, job.label)}", err=True)

    for job in jobs:
        exists = any(p.exists() for p in job.outputs) and not overwrite
        show(job, " (exists: use --overwrite)" if exists else "")
    for folder, dest in folder_outs:
        folder_jobs = find_jobs(folder, dest, restorer.task.name, pattern, recursive)
        click.echo(f"{folder}/ -> {dest}/ ({len(folder_jobs)} {'pairs' if restorer.task.stereo else 'images'})")
        for job in folder_jobs:
            if job.error:
                failures += 1
                click.echo(f"tilediff: error: {job.error}", err=True)
            elif all(p.exists() for p in job.outputs) and not overwrite:
                click.echo(f"{job.label} -> {', '.join(map(str, job.outputs))} (exists: skipped)")
            else:
                show(job, "")
    return failures


def _restore_all(restorer, options, jobs, folder_outs, files, pattern, recursive, overwrite, quiet, writer,
                 cluster=None, started=None):
    """Restore the file jobs, then the folders (on Ray with ``cluster``, restore_folder's Ray arguments);
    returns the number of inputs that failed. Warnings about the data are printed with --quiet too."""
    progress, close = progress_printer(quiet)
    options = options.replace(progress=progress)
    failures, written = 0, set()
    sweep = TempSweeper(started)
    try:
        for job in jobs:
            problem = _job_problems([job], files, overwrite).get(0)
            if problem is None and any(real_path(p) in written for p in job.outputs):
                problem = f"{job.outputs[0]}: already written for an earlier input of this run"
            if problem:
                failures += 1
                click.echo(f"tilediff: error: {problem}", err=True)
                continue
            try:
                entry = restore_job(restorer, job, options, overwrite=overwrite, sweep=sweep, **writer)
            except Exception as e:
                close()
                failures += 1
                click.echo(f"tilediff: error: {error_line(e, job.label)}", err=True)
                continue
            close()
            written.update(real_path(p) for p in job.outputs)
            warn(entry.get("warnings", ()))
            if not quiet:
                click.echo(_summary_line(entry, restorer.device), err=True)

        for folder, dest in folder_outs:
            def on_file(event, entry):
                close()
                if event == "failed":
                    click.echo(f"tilediff: error: {entry['error']}", err=True)
                    return
                warn(entry.get("warnings", ()))
                if quiet:
                    pass
                elif event == "succeeded":
                    click.echo(_summary_line(entry, restorer.device), err=True)
                elif event == "skipped":
                    click.echo(f"skipped {entry['input']}: output exists (--overwrite redoes it)", err=True)
            try:
                summary = restore_folder(folder, dest, restorer=restorer, pattern=pattern, recursive=recursive,
                                         skip_existing=not overwrite, on_file=on_file, options=options, **writer,
                                         **(cluster or {}))
            except (OSError, ValueError) as e:
                failures += 1
                click.echo(f"tilediff: error: {error_line(e, folder)}", err=True)
                continue
            counts = summary["counts"]
            failures += counts["failed"]
            where = (f"summary in {summary['summary_path']}" if "summary_error" not in summary
                     else summary["summary_error"])
            tally = f"{counts['succeeded']} restored, {counts['failed']} failed, {counts['skipped']} skipped"
            if summary.get("stopped"):
                failures += summary.get("not_tried", 0)
                click.echo(f"tilediff: error: {folder}: stopped, the disk is full ({dest}): {tally}, "
                           f"{summary.get('not_tried', 0)} not tried; {where}", err=True)
            elif "summary_error" in summary:
                click.echo(f"tilediff: error: {where}", err=True)
            elif not quiet:
                click.echo(f"{folder}: {tally}; {where}", err=True)
    finally:
        close()
    return failures


def _compression_value(text):
    """--compression as given: digits are a PNG zlib level (0-9), a name a TIFF codec that can be
    written here (``io.check_compression``: refused before any work, not replaced by zlib later)."""
    if text is None:
        return None
    value = text.strip()
    if value.isdigit():
        if int(value) > 9:
            fail(f"--compression {text}: a PNG zlib level is 0-9 (TIFF takes a codec name: zlib, lzw, zstd, none)")
        return int(value)
    try:
        check_compression(value)
    except ValueError as e:
        if str(e).startswith("unknown TIFF compression"):
            fail(f"--compression {text}: not a PNG level (0-9) nor a TIFF codec name (zlib, lzw, zstd, none, ...)")
        fail(f"--compression {text}: {e}")
    return value


def _plan_text(restorer, sizes, options):
    """engine.make_plan(...).describe() for an image (a pair for stereo) of these (h, w) sizes."""
    from .. import engine
    task = restorer.task
    if task.stereo and sizes[0] != sizes[1]:
        raise ValueError(f"left and right views differ in size: {sizes[0]} vs {sizes[1]}")
    h, w = sizes[0]
    plan = engine.make_plan(restorer.model, (h * task.upscale, w * task.upscale), 6 if task.stereo else 3,
                            options, restorer.device)
    return plan.describe()


def _summary_line(entry, device):
    out = entry["output"] if isinstance(entry["output"], str) else ", ".join(entry["output"])
    w, h = entry["size"]
    peak = entry.get("peak_memory") or peak_memory_text(device)     # a Ray worker's entry brings its own
    return f"{out}: {w}x{h}, {entry['seconds']:.1f} s, peak memory {peak}"


def _job_problems(jobs, files, overwrite):
    """{index: why file job ``index`` must not run (one line naming the file)} for the jobs that must
    not: an input of another type, an output that ``batch.check_job_outputs`` refuses (an input,
    not a regular file, an existing file without --overwrite, a parent that is not a folder, an
    extension other than .tif .tiff .png .jpg .jpeg)."""
    from ..io import ImageWriteError
    problems = {}
    for index, job in enumerate(jobs):
        for src in job.inputs:
            if src.is_file() and not is_image_file(src):
                problems[index] = (f"{src}: unsupported file type {src.suffix or '(no extension)'}: tilediff reads "
                                   f"and writes TIFF, PNG and JPEG ({' '.join(SUPPORTED_EXTENSIONS)})")
                break
        else:
            try:
                check_job_outputs(job, overwrite=overwrite, inputs=files)
            except ImageWriteError as e:
                problems[index] = str(e)
    return problems
