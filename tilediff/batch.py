"""Batch restoration: a folder of images with one model, resumable, with a JSON summary.

``restore_folder`` loads the model once, restores the images of a folder in sorted order, reports a
file that fails and goes on with the next, and writes what happened to ``tilediff_summary.json``
(atomically, after every file, so an interrupted batch still leaves an up-to-date summary). Outputs
that exist are skipped, so running the same command again resumes where a batch stopped.

The command line uses the same pieces (``find_jobs``, ``restore_job``) for single files, so both
paths write outputs, name them and report errors the same way: every output is checked before any
work (``io.check_output``: a regular file or nothing, never an input), warnings about the data come
back in the entry (``"warnings"``), and temporaries a killed run left in an output folder are
removed before the first write into it (``TempSweeper``).

A full disk stops a folder batch: the file being written is reported as failed (its error names it
and says "disk full"), the rest are not tried, and the summary says ``"stopped": "disk full"``
(written if there is room for it, else ``"summary_error"`` in the returned dict).
"""
import datetime
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from .io import (SUPPORTED_EXTENSIONS, ImageReadError, ImageWriteError, format_for_path, is_image_file, output_path,
                 read_image, write_image)
from .io.atomic import atomic_write, check_output, real_path, remove_stale_temporaries
from .io.errors import collecting_warnings, describe, is_disk_full
from .options import RestoreOptions
from .tasks import get_task

SUMMARY_NAME = "tilediff_summary.json"

# Stereo pairs in a folder: the stem ends in a left/right marker, optionally after '_', '-', '.' or ' ':
# NAME_L / NAME_R, NAME_left / NAME_right (any case), NAME0 / NAME1. Left and right share NAME and separator.
_STEREO_MARK = re.compile(r"^(?P<key>.*?)(?P<sep>[_\-. ]?)(?P<mark>left|right|l|r|0|1)$", re.IGNORECASE)
_STEREO_SIDE = {"left": ("word", 0), "right": ("word", 1), "l": ("letter", 0), "r": ("letter", 1),
                "0": ("digit", 0), "1": ("digit", 1)}
STEREO_RULE = ("stereo views are paired by name: NAME_L/NAME_R, NAME_left/NAME_right or NAME0/NAME1, "
               "any case, separator _ - . or none")


@dataclass
class Job:
    """One restoration: one input (a pair for stereo-sr) and its output path(s)."""

    inputs: tuple
    outputs: tuple
    error: str | None = None          # set when the job cannot run (e.g. a stereo view without its partner)
    extra: dict = field(default_factory=dict)

    @property
    def label(self):
        return str(self.inputs[0]) if len(self.inputs) == 1 else " + ".join(map(str, self.inputs))


def default_out_dir(in_dir, task):
    """The output folder used when none is given: ``DIR_TASK`` beside ``DIR``."""
    in_dir = Path(in_dir)
    name = in_dir.resolve().name or "images"
    return in_dir.resolve().parent / f"{name}_{task}"


def _inside(path, folder):
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def find_inputs(in_dir, task, out_dir, pattern="*", recursive=False):
    """Image files of ``in_dir`` matching ``pattern``, sorted by their path relative to ``in_dir``.

    Only supported extensions (.tif .tiff .png .jpg .jpeg) count; hidden files (temporary files of an
    interrupted write among them) are left out, and so are this task's own outputs: files inside
    ``out_dir`` when it lies in ``in_dir``, or files named ``*_TASK.*`` when both are the same folder.
    """
    in_dir = Path(in_dir)
    root = in_dir.resolve()
    out_root = Path(out_dir).resolve()
    candidates = in_dir.rglob(pattern) if recursive else in_dir.glob(pattern)
    found = []
    for path in candidates:
        rel = path.relative_to(in_dir)
        if any(part.startswith(".") for part in rel.parts) or not is_image_file(path) or not path.is_file():
            continue
        if out_root == root:
            if path.stem.endswith(f"_{task}"):
                continue
        elif _inside(path.resolve(), out_root):
            continue
        found.append(path)
    return sorted(found, key=lambda p: p.relative_to(in_dir).as_posix())


def stereo_side(path):
    """(key, side) of a stereo view from its name, side 0 = left, 1 = right; None when the name says neither."""
    m = _STEREO_MARK.match(Path(path).stem)
    if m is None:
        return None
    family, side = _STEREO_SIDE[m["mark"].lower()]
    return (str(Path(path).parent), m["key"], m["sep"], family), side


def pair_stereo(files):
    """Match left and right views by name (``STEREO_RULE``); returns (pairs, problems).

    pairs: sorted (left, right) tuples; problems: (path, message) for files without a partner.
    """
    groups, problems = {}, []
    for path in files:
        found = stereo_side(path)
        if found is None:
            problems.append((path, f"cannot tell whether this is a left or a right view ({STEREO_RULE})"))
            continue
        key, side = found
        groups.setdefault(key, ([], []))[side].append(path)
    pairs = []
    for (_, name, sep, family), (lefts, rights) in groups.items():
        if len(lefts) == 1 and len(rights) == 1:
            pairs.append((lefts[0], rights[0]))
            continue
        for path in lefts + rights:
            if not lefts or not rights:
                other = "right" if path in lefts else "left"
                problems.append((path, f"no {other} view found for this one ({STEREO_RULE})"))
            else:
                problems.append((path, f"several files claim the same stereo view {name}{sep}*: "
                                       f"{', '.join(p.name for p in lefts + rights)}"))
    pairs.sort(key=lambda pair: str(pair[0]))
    problems.sort(key=lambda item: str(item[0]))
    return pairs, problems


def find_jobs(in_dir, out_dir, task, pattern="*", recursive=False):
    """The jobs of a folder, in sorted order: outputs named as ``io.output_path`` in ``out_dir``,
    mirroring subfolders. For stereo-sr, left/right pairs (unpaired views become jobs with an error)."""
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    task_obj = get_task(task)
    files = find_inputs(in_dir, task_obj.name, out_dir, pattern, recursive)

    def target(src):
        return output_path(src, task_obj.name, out_dir / src.relative_to(in_dir).parent)

    if not task_obj.stereo:
        return [Job((src,), (target(src),)) for src in files]
    pairs, problems = pair_stereo(files)
    jobs = [Job(pair, tuple(target(p) for p in pair)) for pair in pairs]
    jobs += [Job((path,), (), error=f"{path}: {message}") for path, message in problems]
    jobs.sort(key=lambda job: job.inputs[0].relative_to(in_dir).as_posix())
    return jobs


def write_options(path, like, jpeg_quality=None, compression=None):
    """Keyword arguments for ``io.write_image`` of one output.

    ``compression`` may be a PNG zlib level (0-9, int or digits) or a TIFF codec name ('zlib', 'lzw',
    'none', ...); it applies only to outputs of its format, the others keep their defaults.
    """
    fmt = format_for_path(path) or (like.format if like is not None else None)
    options = {}
    if jpeg_quality is not None:
        options["jpeg_quality"] = int(jpeg_quality)
    if compression is not None:
        level = compression if isinstance(compression, int) else (
            int(compression) if str(compression).strip().isdigit() else None)
        if fmt == "png" and level is not None:
            options["compression"] = level
        elif fmt == "tiff" and level is None:
            options["compression"] = compression
    return options


def error_line(exc, source=None):
    """One line for a failed file; I/O errors already name their file, others get ``source`` in front."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, (ImageReadError, ImageWriteError)):
        return text
    if not isinstance(exc, (ValueError, OSError)):
        text = f"{type(exc).__name__}: {text}"
    return f"{source}: {text}" if source is not None else text


class TempSweeper:
    """``sweeper(folder)``: remove the stale temporaries of ours in ``folder``
    (``io.atomic.remove_stale_temporaries``: left by a run that was killed, older than ``started``),
    once per folder for one run."""

    def __init__(self, started=None):
        self.started = time.time() if started is None else started
        self.done = set()

    def __call__(self, folder):
        key = real_path(folder)
        if key not in self.done:
            self.done.add(key)
            remove_stale_temporaries(folder, self.started)


def check_job_outputs(job, overwrite=False, inputs=()):
    """Raise ImageWriteError (one line naming the output) unless every output of ``job`` may be
    written (``io.check_output``: a supported extension, a regular file or nothing, never one of the
    job's inputs or of ``inputs``, an existing file only with ``overwrite``)."""
    if len({real_path(dst) for dst in job.outputs}) < len(job.outputs):
        raise ImageWriteError(job.outputs[0], "the left and right views would be written to the same file; use -o")
    for dst in job.outputs:
        check_output(dst, inputs=(*job.inputs, *inputs), overwrite=overwrite, extensions=SUPPORTED_EXTENSIONS)


def restore_job(restorer, job, options=None, *, jpeg_quality=None, compression=None, overwrite=True, sweep=None):
    """Read, restore and write one job with ``options`` (RestoreOptions); returns a summary entry
    (input, output, size, seconds, and ``warnings``: one-line texts about the data, when there were).

    The outputs are checked first (``check_job_outputs``; ``overwrite``: whether an existing file may
    be replaced), ``sweep`` (a ``TempSweeper``) is called on each output folder before it is written
    into. Raises what reading, restoring or writing raises. Outputs of this job written before a
    later one failed are removed, so a job leaves all its outputs or none.
    """
    check_job_outputs(job, overwrite=overwrite)
    start = time.perf_counter()
    with collecting_warnings(job.label) as notes:
        if not restorer.task.stereo:
            # one image, streamed: read by regions, written in bands as it is decoded (atomically)
            src, dst = job.inputs[0], job.outputs[0]
            made = _make_folder(Path(dst).parent, dst)
            if sweep is not None:
                sweep(Path(dst).parent)
            try:
                restorer.restore_file(src, dst, options, **write_options(dst, None, jpeg_quality, compression))
            except BaseException:
                _remove_made(made)      # no empty output folder left for a file that failed
                raise
            from .io import read_size
            h, w = read_size(dst)
        else:
            images = [read_image(src) for src in job.inputs]
            if len(images) != 2:
                raise ValueError(f"{job.inputs[0]}: stereo-sr needs a left/right pair")
            results = restorer.restore((images[0].rgb, images[1].rgb), options)
            written = []
            try:
                for image, out, dst in zip(images, results, job.outputs):
                    _make_folder(Path(dst).parent, dst)
                    if sweep is not None:
                        sweep(Path(dst).parent)
                    write_image(dst, out, like=image, **write_options(dst, image, jpeg_quality, compression))
                    written.append(Path(dst))
            except BaseException:
                for path in written:
                    try:
                        path.unlink()
                    except OSError:
                        pass
                raise
            h, w = results[0].shape[:2]
    entry = _entry(job, size=[w, h], seconds=round(time.perf_counter() - start, 3),
                   bytes=sum(Path(p).stat().st_size for p in job.outputs))
    if notes:
        entry["warnings"] = list(notes)
    return entry


def _make_folder(folder, output=None):
    """Make ``folder`` (and its parents); returns the folders it made, outermost first (for
    ``_remove_made``). ImageWriteError naming ``output`` (else the folder) if it cannot be made,
    e.g. because a file stands where a folder should be."""
    folder = Path(folder)
    made = []
    parent = folder
    while not parent.exists() and parent != parent.parent:
        made.insert(0, parent)
        parent = parent.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return made
    except OSError as exc:
        parent = folder
        while parent != parent.parent and not parent.exists():
            parent = parent.parent
        why = (f"parent {parent} is not a folder" if parent.exists() and not parent.is_dir()
               else f"cannot create {folder} ({describe(exc)})")
        raise ImageWriteError(output if output is not None else folder, f"cannot write here: {why}") from exc


def _remove_made(made):
    """Remove the folders ``_make_folder`` made, innermost first, where they are still empty: a job
    that failed leaves no empty output folder behind."""
    for folder in reversed(made):
        try:
            os.rmdir(folder)
        except OSError:
            break


def _entry(job, **values):
    def one(paths):
        paths = [str(p) for p in paths]
        return paths[0] if len(paths) == 1 else paths
    entry = {"input": one(job.inputs)}
    if job.outputs:
        entry["output"] = one(job.outputs)
    entry.update(values)
    return entry


def write_json_atomic(path, data):
    """Write JSON to ``path`` atomically (``io.atomic``), making its folder if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda fh: fh.write((json.dumps(data, indent=2) + "\n").encode()))


def _now():
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


@dataclass
class FolderRun:
    """What a folder batch knows before its first file: the task, the checked options, where the
    outputs and the summary go, the jobs, the resolved input paths and the summary to fill."""

    task: object
    options: RestoreOptions
    out_dir: Path
    summary_path: Path
    jobs: list
    inputs: set
    summary: dict


def summary_options(options, jpeg_quality, compression):
    """The summary's "options": the restore options as JSON, and the writer's."""
    return dict(options.as_json(), jpeg_quality=jpeg_quality, compression=compression)


def start_folder(in_dir, out_dir, *, task, restorer, weights, options, restore_options, pattern, recursive,
                 summary_path, jpeg_quality, compression):
    """The checks and the set-up every folder batch (this process's or Ray's) starts with."""
    in_dir = Path(in_dir)
    if not in_dir.is_dir():
        raise NotADirectoryError(f"{in_dir}: not a folder")
    if task is None:
        if restorer is None:
            raise ValueError("give a task (or a restorer)")
        task = restorer.task.name
    task_obj = get_task(task)
    if restorer is not None and restorer.task.name != task_obj.name:
        raise ValueError(f"the restorer is for task {restorer.task.name}, not {task_obj.name}")
    if options is None:
        options = RestoreOptions.build(task_obj, **restore_options)
    elif restore_options:
        raise ValueError("give the restore options either as options= or as keywords, not both")
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(in_dir, task_obj.name)
    summary_path = Path(summary_path) if summary_path is not None else out_dir / SUMMARY_NAME
    jobs = find_jobs(in_dir, out_dir, task_obj.name, pattern, recursive)
    summary = {
        "task": task_obj.name,
        "weights": str(restorer.weights if restorer is not None else weights or "(shipped)"),
        "input_dir": str(in_dir), "output_dir": str(out_dir), "pattern": pattern, "recursive": recursive,
        "options": summary_options(options, jpeg_quality, compression),
        "started": _now(), "finished": None, "interrupted": False,
        "counts": {"succeeded": 0, "failed": 0, "skipped": 0, "total": len(jobs)},
        "succeeded": [], "failed": [], "skipped": [],
    }
    inputs = {p.resolve() for job in jobs for p in job.inputs}
    return FolderRun(task_obj, options, out_dir, summary_path, jobs, inputs, summary)


def restore_folder(in_dir, out_dir=None, *, task=None, weights=None, pattern="*", recursive=False,
                   skip_existing=True, summary_path=None, restorer=None, device="auto", precision="fp32",
                   jpeg_quality=None, compression=None, on_file=None, options=None, ray=None, workers=None,
                   gpus_per_worker=None, threads_per_worker=None, **restore_options):
    """Restore every image of ``in_dir`` into ``out_dir``; returns the summary (a dict).

    - ``out_dir`` None: ``DIR_TASK`` beside ``in_dir`` (``default_out_dir``). Outputs are named
      ``NAME_TASK.EXT`` (``io.output_path``), in subfolders mirroring ``in_dir``'s when ``recursive``.
    - ``pattern``: a glob on file names (``*.tif``); only .tif/.tiff/.png/.jpg/.jpeg files count.
    - The model is loaded once (or ``restorer``, a ``Restorer``, is used); stereo-sr pairs views by name
      (``STEREO_RULE``).
    - A file that fails is recorded with a one-line error and the batch goes on.
    - ``skip_existing``: outputs that exist are skipped (so a rerun resumes); False redoes them.
    - The summary (succeeded: input, output, size [w, h], bytes, seconds; failed: input, error;
      skipped: input, output, reason) is written atomically to ``summary_path`` or
      ``out_dir/tilediff_summary.json`` after every file. Stereo entries hold [left, right] lists.
    - ``device``, ``precision`` build the Restorer; ``jpeg_quality``, ``compression`` go to the writer
      (see ``write_options``); ``on_file(event, entry)`` is called with 'start', 'succeeded', 'failed'
      or 'skipped'; ``options`` (a RestoreOptions) and every other keyword (its fields and the task's own
      options: steps, sampler, seed, samples, ensemble, tile, overlap, mode, memory_budget, progress,
      prior, prior_t, recompose, src_lens, tgt_lens, disparity, ...) are the restore options, checked
      once before any file is read.
    - ``ray``: ``"local"``, ``"auto"`` or a cluster address distributes the files over Ray workers
      (``workers``, ``gpus_per_worker``, ``threads_per_worker``; see ``tilediff.cluster``), with the same
      outputs and summary (plus a ``"ray"`` key). None (the default): this process, and Ray is not imported.
    - A full disk stops the batch: the file being written is recorded as failed, the summary gets
      ``"stopped": "disk full"`` and ``"not_tried"`` (the files after it). A summary that cannot be
      written does not stop the batch otherwise; the returned dict then holds ``"summary_error"``.
    - Temporaries of ours that a killed run left in the output folders are removed first.
    A KeyboardInterrupt (Ctrl-C; SIGTERM on the command line) is re-raised after the summary is
    written with ``"interrupted": true``.
    """
    if ray is not None:
        from .cluster import restore_folder as restore_folder_on_ray
        return restore_folder_on_ray(
            in_dir, out_dir, task=task, weights=weights, ray=ray, workers=workers, gpus_per_worker=gpus_per_worker,
            threads_per_worker=threads_per_worker, pattern=pattern, recursive=recursive,
            skip_existing=skip_existing, summary_path=summary_path, restorer=restorer, device=device,
            precision=precision, jpeg_quality=jpeg_quality, compression=compression, on_file=on_file,
            options=options, **restore_options)
    if (workers, gpus_per_worker, threads_per_worker) != (None, None, None):
        raise ValueError("workers, gpus_per_worker and threads_per_worker describe Ray workers: give ray= too")
    from .restorer import Restorer

    run = start_folder(in_dir, out_dir, task=task, restorer=restorer, weights=weights, options=options,
                       restore_options=restore_options, pattern=pattern, recursive=recursive,
                       summary_path=summary_path, jpeg_quality=jpeg_quality, compression=compression)
    task_obj, options, out_dir, summary_path = run.task, run.options, run.out_dir, run.summary_path
    jobs, all_inputs, summary = run.jobs, run.inputs, run.summary
    notify = on_file or (lambda event, entry: None)

    problems = {}          # the summary's write failure, if any (the batch goes on without it)

    def save():
        try:
            write_json_atomic(summary_path, summary)
        except OSError as exc:
            problems["summary_error"] = f"{summary_path}: cannot write the summary ({describe(exc)})"
            if is_disk_full(exc):
                raise _DiskFull(exc) from exc

    def record(kind, entry):
        summary[kind].append(entry)
        summary["counts"][kind] += 1
        notify(kind, entry)
        save()

    done = {id(job) for job in jobs if job.error is None and skip_existing
            and all(os.path.isfile(p) for p in job.outputs)}
    if restorer is None and any(job.error is None and id(job) not in done for job in jobs):
        restorer = Restorer(task_obj.name, weights=weights, device=device, precision=precision)
        summary["weights"] = str(restorer.weights)
    if restorer is not None:
        options = restorer.options(options)   # the model file's defaults and limits, checked once
        summary["options"] = summary_options(options, jpeg_quality, compression)
    _make_folder(out_dir)
    sweep = TempSweeper()
    sweep(out_dir)
    try:
        for job in jobs:
            if job.error is not None:
                record("failed", _entry(job, error=job.error))
                continue
            if id(job) in done:
                record("skipped", _entry(job, reason="output exists"))
                continue
            notify("start", _entry(job))
            try:
                check_job_outputs(job, overwrite=True, inputs=all_inputs)
                entry = restore_job(restorer, job, options, jpeg_quality=jpeg_quality, compression=compression,
                                    sweep=sweep)
            except Exception as exc:  # one bad file must not stop the batch (a full disk does)
                record("failed", _entry(job, error=error_line(exc, job.label)))
                if is_disk_full(exc):
                    raise _DiskFull(exc) from exc
                continue
            record("succeeded", entry)
    except _DiskFull:
        counts = summary["counts"]
        summary["stopped"] = "disk full"
        summary["not_tried"] = counts["total"] - counts["succeeded"] - counts["failed"] - counts["skipped"]
        summary["finished"] = _now()
        with _suppress_disk_full():
            save()
    except KeyboardInterrupt:
        summary["interrupted"] = True
        summary["finished"] = _now()
        with _suppress_disk_full():
            save()
        raise
    else:
        summary["finished"] = _now()
        save()
    return dict(summary, summary_path=str(summary_path), **problems)


class _DiskFull(Exception):
    """Internal: the disk filled up during a folder batch, which then stops."""


class _suppress_disk_full:
    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        return kind is not None and issubclass(kind, _DiskFull)
