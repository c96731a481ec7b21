"""Batch restoration: a folder of images with one model, resumable, with a JSON summary.

``restore_folder`` loads the model once, restores the images of a folder in sorted order, reports a
file that fails and goes on with the next, and writes what happened to ``tilediff_summary.json``
(atomically, after every file, so an interrupted batch still leaves an up-to-date summary). Outputs
that exist are skipped, so running the same command again resumes where a batch stopped.

The command line uses the same pieces (``find_jobs``, ``restore_job``) for single files, so both
paths write outputs, name them and report errors the same way.
"""
import datetime
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from .io import ImageReadError, ImageWriteError, format_for_path, is_image_file, output_path, read_image, write_image
from .io.atomic import atomic_write
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


def restore_job(restorer, job, options=None, *, jpeg_quality=None, compression=None):
    """Read, restore and write one job with ``options`` (RestoreOptions); returns a summary entry
    (input, output, size, seconds).

    Raises what reading, restoring or writing raises. Outputs of this job written before a later one
    failed are removed, so a job leaves all its outputs or none.
    """
    start = time.perf_counter()
    images = [read_image(src) for src in job.inputs]
    if restorer.task.stereo:
        if len(images) != 2:
            raise ValueError(f"{job.inputs[0]}: stereo-sr needs a left/right pair")
        results = restorer.restore((images[0].rgb, images[1].rgb), options)
    else:
        results = (restorer.restore(images[0].rgb, options),)
    written = []
    try:
        for image, out, dst in zip(images, results, job.outputs):
            Path(dst).parent.mkdir(parents=True, exist_ok=True)
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
    return _entry(job, size=[w, h], seconds=round(time.perf_counter() - start, 3),
                  bytes=sum(Path(p).stat().st_size for p in job.outputs))


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
    A KeyboardInterrupt is re-raised after the summary is written with ``"interrupted": true``.
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

    def record(kind, entry):
        summary[kind].append(entry)
        summary["counts"][kind] += 1
        write_json_atomic(summary_path, summary)
        notify(kind, entry)

    done = {id(job) for job in jobs if job.error is None and skip_existing
            and all(Path(p).exists() for p in job.outputs)}
    if restorer is None and any(job.error is None and id(job) not in done for job in jobs):
        restorer = Restorer(task_obj.name, weights=weights, device=device, precision=precision)
        summary["weights"] = str(restorer.weights)
    if restorer is not None:
        options = restorer.options(options)   # the model file's defaults and limits, checked once
        summary["options"] = summary_options(options, jpeg_quality, compression)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        for job in jobs:
            if job.error is not None:
                record("failed", _entry(job, error=job.error))
                continue
            if id(job) in done:
                record("skipped", _entry(job, reason="output exists"))
                continue
            clash = [p for p in job.outputs if Path(p).resolve() in all_inputs]
            if clash:
                record("failed", _entry(job, error=f"{clash[0]}: refusing to overwrite an input"))
                continue
            notify("start", _entry(job))
            try:
                entry = restore_job(restorer, job, options, jpeg_quality=jpeg_quality, compression=compression)
            except Exception as exc:  # one bad file must not stop the batch
                record("failed", _entry(job, error=error_line(exc, job.label)))
                continue
            record("succeeded", entry)
    except KeyboardInterrupt:
        summary["interrupted"] = True
        summary["finished"] = _now()
        write_json_atomic(summary_path, summary)
        raise
    summary["finished"] = _now()
    write_json_atomic(summary_path, summary)
    return dict(summary, summary_path=str(summary_path))
