"""Folders at cluster scale: ``restore_folder`` over a pool of Ray actors.

``tilediff.restore_folder(in_dir, out_dir, task=..., ray="local" | "auto" | ADDRESS)`` comes here.
The folder's jobs, output names, skip-what-exists resume, writer options and summary are the
single-process batch's (``tilediff.batch``); what changes is who restores the files:

1. the driver (this process) finds the jobs, records what it can decide alone (unpaired stereo
   views, outputs that exist, outputs that would overwrite an input) and resolves the options
   against the model file's metadata, so that option and model-file errors come before Ray starts;
2. it starts or joins Ray (``local``: a Ray instance on this machine, ``auto`` / an address: a
   running cluster) and starts a pool of ``cluster_worker.FileWorker`` actors: one per GPU
   (``gpus_per_worker``, default 1 when the cluster has GPUs; 0.5 puts two on each GPU, so that one
   decodes and encodes files while the other computes), else CPU actors with ``threads_per_worker``
   torch threads each. Each actor builds the model once;
3. each idle actor is handed the next job: paths travel, pixels never pass through the object
   store: the actor reads, restores and writes its files itself (``batch.restore_job``: atomic
   writes, a job leaves all its outputs or none). One job per actor at a time, so that a worker's
   death is charged to the file it was restoring and to no other;
4. results are merged into the summary (``tilediff_summary.json``, the single-process layout plus a
   ``ray`` key) as they arrive, with ``on_file(event, entry)`` called as in the single-process batch;
   the file is rewritten atomically at most every half second (``_Ledger``) and at the end;
5. a file whose worker dies (killed, out of memory: ``RayActorError``, ``WorkerCrashedError``, ...)
   is retried once on a new worker, then recorded as failed; the dead actor is replaced;
6. Ctrl-C cancels the calls in flight (``ray.cancel``: the workers stop at the engine's next
   progress report and remove what they had begun to write), waits a few seconds for them, kills
   the actors, writes the summary with ``"interrupted": true`` and re-raises KeyboardInterrupt.

The paths must mean the same on every node (shared storage) and the model file must be readable
there; the shipped weights are each node's own install. Ray is imported only here, and only when a
folder is restored with ``ray=``.
"""
from __future__ import annotations

import collections
import contextlib
import logging
import os
import sys
import time
import types
from dataclasses import replace as _replace
from pathlib import Path

from .batch import _entry, _now, error_line, start_folder, summary_options, write_json_atomic
from .io.atomic import TEMP_MARK, TEMP_SUFFIX
from .tasks import get_task

__all__ = ["restore_folder", "ClusterError", "connect", "plan_pool"]

CANCEL_GRACE_SECONDS = 10.0     # how long Ctrl-C waits for cancelled calls to clean up before killing
START_TIMEOUT_SECONDS = 600.0   # how long the pool may have no running worker before the batch gives up
DEFAULT_CPU_THREADS = 4         # torch threads per CPU worker when neither workers nor threads are given
LOCAL_OBJECT_STORE = 256 << 20  # a local instance's object store: only paths and summary entries pass
SUMMARY_INTERVAL_SECONDS = 0.5  # the summary file is rewritten at most this often while results arrive


class ClusterError(OSError):
    """Ray could not do the work: no cluster at the address, no worker could be started or placed,
    a worker could not load the model. (An OSError, as the environment is what failed.)"""


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ImportError("restoring on Ray needs Ray: pip install 'tilediff[cluster]' (or pip install ray)") from None
    return ray


def _worker_deaths(ray):
    """The errors that mean the worker (not the file) failed: the file is retried on another worker."""
    ex = ray.exceptions
    names = ("RayActorError", "WorkerCrashedError", "OutOfMemoryError", "NodeDiedError", "LocalRayletDiedError",
             "ObjectLostError", "OwnerDiedError")
    return tuple(getattr(ex, n) for n in names if hasattr(ex, n))


def _unplaceable(ray):
    """The errors that mean no worker can be started at all (no node fits it, its environment fails)."""
    ex = ray.exceptions
    return tuple(getattr(ex, n) for n in ("ActorUnschedulableError", "RuntimeEnvSetupError") if hasattr(ex, n))


@contextlib.contextmanager
def connect(address="local", *, num_cpus=None):
    """Ray for one batch: ``local`` starts an instance on this machine (``num_cpus`` CPUs, default the
    machine's; its GPUs are found by Ray), ``auto`` joins the cluster this machine belongs to (``ray
    start`` was run on it), anything else is a cluster address (``HOST:6379``, ``ray://HOST:10001``).
    A Ray already initialised in this process is used as it is and left running; one started here
    is shut down on the way out. Yields the ``ray`` module."""
    ray = _import_ray()
    if ray.is_initialized():
        yield ray
        return
    quiet = dict(log_to_driver=False, logging_level=logging.ERROR)
    try:
        if address == "local":
            ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False,
                     object_store_memory=LOCAL_OBJECT_STORE, **quiet)
        else:
            ray.init(address=address, **quiet)
    except Exception as exc:
        what = "start a local Ray instance" if address == "local" else f"join the Ray cluster at {address}"
        hint = ""
        if address not in ("local", "auto") and not os.environ.get("RAY_AUTH_MODE"):
            # Ray enables token authentication on clusters it finds a token for, but a driver given an
            # explicit address only sends one when told to
            hint = (" (if the cluster uses token authentication: set RAY_AUTH_MODE=token, with the cluster's "
                    "token in ~/.ray/auth_token or RAY_AUTH_TOKEN)")
        raise ClusterError(f"cannot {what}: {error_line(exc)}{hint}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def plan_pool(resources, *, nodes=None, workers=None, gpus_per_worker=None, threads_per_worker=None,
              device="auto"):
    """The actor pool for a cluster's ``resources`` (``ray.cluster_resources()``; ``nodes``: each alive
    node's resources, when known): a dict with workers, gpus_per_worker, threads_per_worker (torch
    threads), cpus_per_worker (the Ray resource each actor holds) and device (what each worker builds
    its Restorer on).

    - GPU workers when ``gpus_per_worker`` > 0, or when it is None and the cluster has GPUs (unless
      ``device`` is cpu): ``gpus_per_worker`` (default 1) of a GPU each, and as many workers as the
      GPUs hold (``workers`` caps it lower or asks for more, which then wait for GPUs). Each also
      holds its share of its node's CPUs (for reading, writing and the host's part of a task, e.g.
      dehazing's dark channel prior): the smallest share any GPU node gives, at least 1;
    - else CPU workers: ``threads_per_worker`` torch threads each (default: the CPUs shared among
      ``workers``, or 4), and ``workers`` (default: as many as the CPUs hold).
    """
    gpus = float(resources.get("GPU", 0))
    cpus = float(resources.get("CPU", 0)) or 1.0
    want_cpu = str(device) == "cpu"
    if gpus_per_worker is None:
        gpus_per_worker = 1.0 if gpus > 0 and not want_cpu else 0.0
    gpus_per_worker = float(gpus_per_worker)
    if gpus_per_worker < 0:
        raise ValueError(f"gpus_per_worker must be 0 or more, got {gpus_per_worker}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    if threads_per_worker is not None and (isinstance(threads_per_worker, bool)
                                           or not isinstance(threads_per_worker, int) or threads_per_worker < 1):
        raise ValueError(f"threads_per_worker must be a positive integer, got {threads_per_worker!r}")
    if gpus_per_worker > 0:
        if want_cpu:
            raise ValueError("device cpu with gpus_per_worker > 0: give one or the other")
        if gpus == 0:
            raise ClusterError("gpus_per_worker was given but the Ray cluster has no GPUs")
        if gpus_per_worker > 1 and gpus_per_worker != int(gpus_per_worker):
            raise ValueError(f"gpus_per_worker above 1 must be a whole number, got {gpus_per_worker}")
        count = workers or max(1, int(gpus / gpus_per_worker + 1e-9))
        gpu_nodes = [n for n in (nodes or [resources]) if float(n.get("GPU", 0)) > 0]
        per_node = min(float(n.get("CPU", 0)) * gpus_per_worker / float(n["GPU"]) for n in gpu_nodes)
        threads = threads_per_worker or max(1, int(per_node + 1e-9))
        cpu_share = float(min(threads, max(1, int(per_node + 1e-9))))
        dev = "cuda" if str(device) in ("auto", "None") or str(device).startswith("cuda") else str(device)
    else:
        if str(device).startswith("cuda"):
            raise ValueError(f"device {device} but no GPU share per worker: give gpus_per_worker (e.g. 1)")
        threads = threads_per_worker or (max(1, int(cpus // workers)) if workers
                                         else max(1, min(DEFAULT_CPU_THREADS, int(cpus))))
        count = workers or max(1, int(cpus // threads))
        cpu_share = min(float(threads), cpus / count)
        dev = "cpu"
    return {"workers": count, "gpus_per_worker": gpus_per_worker, "threads_per_worker": threads,
            "cpus_per_worker": cpu_share, "device": dev}


def _model_options(task_obj, weights, restorer, options, precision):
    """(weights path for the summary, weights for the workers, resolved options) without building the
    networks: the model file's metadata decides the defaults (what ``Restorer.options`` does)."""
    from .weights import ModelFileError, read_metadata
    shipped = task_obj.shipped_weights()
    if restorer is not None:
        path = Path(restorer.weights)
        resolved = restorer.options(options)
    else:
        path = Path(weights) if weights is not None else shipped
        if path is None:
            raise ModelFileError(f"task {task_obj.name} has no shipped weights: pass weights=MODEL.safetensors "
                                 f"(convert the reference checkpoints, {task_obj.reference_checkpoints}, with "
                                 f"`tilediff convert`)")
        meta = read_metadata(path)
        if get_task(meta["task"]).name != task_obj.name:
            raise ModelFileError(f"{path}: this model file is for task {meta['task']}, not {task_obj.name}")
        resolved = options.resolve(types.SimpleNamespace(metadata=meta, sde=meta["sde"]), precision)
    # the shipped weights are each node's own install; any other file must be on shared storage
    for_workers = None if shipped is not None and path.resolve() == Path(shipped).resolve() else str(path.resolve())
    return path, for_workers, resolved


def _absolute(job):
    """The job with absolute paths: the workers' working folders are not the driver's."""
    return _replace(job, inputs=tuple(Path(p).resolve() for p in job.inputs),
                    outputs=tuple(Path(p).resolve() for p in job.outputs))


def _remove_temporaries(job):
    """Remove the temporary files a killed worker may have left beside this job's outputs."""
    for out in job.outputs:
        out = Path(out)
        with contextlib.suppress(OSError):
            for tmp in out.parent.glob(f".{out.name}{TEMP_MARK}*{TEMP_SUFFIX}"):
                with contextlib.suppress(OSError):
                    tmp.unlink()


def _as_given(job, work, entry):
    """A worker's entry in the driver's words: the job's paths as given (not the absolute ones sent)."""
    entry = dict(entry)
    if "error" in entry:
        for given, sent in zip(job.inputs + job.outputs, work.inputs + work.outputs):
            entry["error"] = entry["error"].replace(str(sent), str(given))
    return dict(_entry(job), **{k: v for k, v in entry.items() if k not in ("input", "output")})


def _hook_env():
    """The test hooks set in this process, passed on to the workers (see ``cluster_worker``)."""
    from .cluster_worker import TEST_HOOKS
    return {k: os.environ[k] for k in TEST_HOOKS if os.environ.get(k)}


class _Ledger:
    """The summary as results arrive: ``on_file`` is told at once, the file progress bar (while there
    is one) advances, and the summary file is rewritten (atomically), at most every
    ``SUMMARY_INTERVAL_SECONDS`` and never for more than 5% of the time: a summary of 100,000 entries is
    some 30 MB, and rewriting it after every one of 20 files a second would be the cluster's bottleneck.
    The outputs themselves are the resume state, so a summary a second behind loses nothing."""

    def __init__(self, summary, path, on_file):
        self.summary, self.path = summary, path
        self.notify = on_file or (lambda event, entry: None)
        self.bar = None
        self.due = 0.0          # time.monotonic() after which the next write may happen
        self.dirty = False

    def save(self, force=True):
        """Write the summary now (``force``), or when the last write is long enough ago."""
        self.dirty = True
        if not force and time.monotonic() < self.due:
            return
        begin = time.monotonic()
        write_json_atomic(self.path, self.summary)
        took = time.monotonic() - begin
        self.due, self.dirty = begin + max(SUMMARY_INTERVAL_SECONDS, 20 * took), False

    def flush(self):
        """Write a summary that changed since the last write, when due."""
        if self.dirty:
            self.save(force=False)

    def say(self, event, entry):
        if self.bar is None:
            self.notify(event, entry)
            return
        with self.bar.external_write_mode(file=sys.stderr):
            self.notify(event, entry)

    def record(self, kind, entry):
        self.summary[kind].append(entry)
        self.summary["counts"][kind] += 1
        self.save(force=False)
        if self.bar is not None:
            self.bar.update(1)
        self.say(kind, entry)

    def finish(self, interrupted=False):
        self.summary["interrupted"] = self.summary["interrupted"] or interrupted
        self.summary["finished"] = _now()
        self.save()
        return dict(self.summary, summary_path=str(self.path))


def restore_folder(in_dir, out_dir=None, *, task=None, weights=None, ray="local", workers=None,
                   gpus_per_worker=None, threads_per_worker=None, pattern="*", recursive=False,
                   skip_existing=True, summary_path=None, restorer=None, device="auto", precision="fp32",
                   jpeg_quality=None, compression=None, on_file=None, options=None, **restore_options):
    """``batch.restore_folder`` over a Ray actor pool; returns the same summary (plus a ``ray`` key).

    - ``ray``: ``local`` (start Ray on this machine), ``auto`` (join the cluster this machine is
      part of) or a cluster address; ``workers``, ``gpus_per_worker``, ``threads_per_worker``: the pool
      (``plan_pool``). ``device``: auto (the workers' GPUs, else cpu), cpu or cuda.
    - ``restorer``: used in the driver for its model file, precision and resolved options only; the
      workers build their own from the same file (which must be readable on every node).
    - The other arguments are ``batch.restore_folder``'s. The per-stage ``progress`` callback cannot
      travel to the workers: when one is given, a progress bar over the files (with files/s) is shown
      on stderr instead.
    - A file whose worker dies is retried once on a new worker (its entry then holds ``attempts``),
      then recorded as failed; entries also name the ``worker`` (node:pid) that restored them. The
      ``ray`` key holds the address, the pool, the worker restarts, and the pool's seconds and files/s.
    - When nothing is left to restore (a rerun of a finished batch), Ray is not started.
    A KeyboardInterrupt cancels the work in flight and is re-raised after the summary is written
    with ``"interrupted": true``.
    """
    address = ray
    run = start_folder(in_dir, out_dir, task=task, restorer=restorer, weights=weights, options=options,
                       restore_options=restore_options, pattern=pattern, recursive=recursive,
                       summary_path=summary_path, jpeg_quality=jpeg_quality, compression=compression)
    task_obj, out_dir, jobs, all_inputs = run.task, run.out_dir, run.jobs, run.inputs
    if restorer is not None:
        precision = restorer.precision
    show_bar = run.options.progress is not None
    options = run.options.replace(progress=None)       # callbacks do not travel to the workers
    ledger = _Ledger(dict(run.summary, ray={"address": address, "workers": 0}), run.summary_path, on_file)

    # 1. what the driver decides alone, in the folder's order
    pending = []
    for job in jobs:
        if job.error is not None:
            ledger.record("failed", _entry(job, error=job.error))
        elif skip_existing and all(Path(p).exists() for p in job.outputs):
            ledger.record("skipped", _entry(job, reason="output exists"))
        elif any(Path(p).resolve() in all_inputs for p in job.outputs):
            clash = [p for p in job.outputs if Path(p).resolve() in all_inputs]
            ledger.record("failed", _entry(job, error=f"{clash[0]}: refusing to overwrite an input"))
        else:
            pending.append(job)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not pending:                                # nothing to restore: no model, no Ray
        return ledger.finish()

    # 2. the model file's defaults, checked before any worker starts
    weights_path, worker_weights, options = _model_options(task_obj, weights, restorer, options, precision)
    ledger.summary["weights"] = str(weights_path)
    ledger.summary["options"] = summary_options(options, jpeg_quality, compression)
    worker_args = dict(task=task_obj.name, weights=worker_weights, precision=precision, options=options,
                       writer=dict(jpeg_quality=jpeg_quality, compression=compression))

    # 3. Ray, the pool, the files
    local_cpus = max(os.cpu_count() or 1, (workers or 0) * (threads_per_worker or 1)) if address == "local" else None
    try:
        with connect(address, num_cpus=local_cpus) as ray_api:
            nodes = [n.get("Resources", {}) for n in ray_api.nodes() if n.get("Alive")]
            pool = plan_pool(ray_api.cluster_resources(), nodes=nodes, workers=workers,
                             gpus_per_worker=gpus_per_worker, threads_per_worker=threads_per_worker, device=device)
            ledger.summary["ray"] = {
                "address": address, "cluster": ray_api.get_runtime_context().gcs_address, "nodes": len(nodes),
                **{k: pool[k] for k in ("workers", "gpus_per_worker", "threads_per_worker", "device")},
                "worker_restarts": 0}
            ledger.save()
            if show_bar:
                from tqdm import tqdm
                ledger.bar = tqdm(total=len(pending), desc="files", unit="file", file=sys.stderr,
                                  dynamic_ncols=True, postfix={"workers": pool["workers"]})
            try:
                _run_pool(ray_api, pool, pending, ledger, worker_args)
            finally:
                if ledger.bar is not None:
                    ledger.bar.close()
                    ledger.bar = None
    except KeyboardInterrupt:
        ledger.finish(interrupted=True)
        raise
    return ledger.finish()


def _run_pool(ray, pool, pending, ledger, worker_args):
    """Hand the pending jobs to a pool of FileWorker actors, one job per actor at a time, until every
    job is recorded. A worker's death sends its job back to the front of the queue once (attempt 2)
    and starts a new worker in its place."""
    from .cluster_worker import FileWorker

    deaths = _worker_deaths(ray)
    actor_options = dict(num_cpus=pool["cpus_per_worker"], num_gpus=pool["gpus_per_worker"],
                         scheduling_strategy="SPREAD", max_restarts=0)
    if _hook_env():
        actor_options["runtime_env"] = {"env_vars": _hook_env()}
    remote_worker = ray.remote(FileWorker).options(**actor_options)
    fraction = pool["gpus_per_worker"] if 0 < pool["gpus_per_worker"] < 1 else None
    stats = ledger.summary["ray"]

    actors = []          # every actor started: all are killed at the end, whatever happened
    starting = {}        # ready() ref -> actor still loading its model
    idle = []            # actors waiting for a job
    running = {}         # restore() ref -> (actor, job as given, job with absolute paths, attempt)
    queue = collections.deque((job, 1) for job in pending)   # (job, attempt), retries at the front
    start_failures, finished = 0, 0
    began = last_event = time.monotonic()

    def start_worker():
        actor = remote_worker.remote(worker_args["task"], worker_args["weights"], pool["device"],
                                     worker_args["precision"], worker_args["options"], worker_args["writer"],
                                     threads=pool["threads_per_worker"], memory_fraction=fraction)
        actors.append(actor)
        starting[actor.ready.remote()] = actor

    def kill(actor):
        with contextlib.suppress(Exception):
            ray.kill(actor, no_restart=True)

    def release(actor):
        """Back to the idle list, or, with no work left for it, killed now (its GPU freed)."""
        if queue:
            idle.append(actor)
        else:
            kill(actor)

    for _ in range(min(pool["workers"], len(queue))):
        start_worker()
    try:
        while queue or running:
            # 1. hand the front of the queue to each idle worker
            while idle and queue:
                actor = idle.pop()
                job, attempt = queue.popleft()
                work = _absolute(job)
                ledger.say("start", _entry(job))
                running[actor.restore.remote(work, attempt)] = (actor, job, work, attempt)
            if not starting and not running:          # every worker died: start one more
                start_worker()
            # 2. wait for a worker to be ready or a job to end
            ledger.flush()
            done, _ = ray.wait(list(starting) + list(running), num_returns=1, timeout=SUMMARY_INTERVAL_SECONDS)
            if not done:
                if not running and time.monotonic() - last_event > START_TIMEOUT_SECONDS:
                    raise ClusterError(f"no worker could be placed on the cluster in {START_TIMEOUT_SECONDS:.0f} s "
                                       f"(each needs {pool['cpus_per_worker']:g} CPU and "
                                       f"{pool['gpus_per_worker']:g} GPU)")
                continue
            ref, last_event = done[0], time.monotonic()
            # 3a. a worker has loaded its model (or died trying)
            if ref in starting:
                actor = starting.pop(ref)
                try:
                    info = ray.get(ref)
                except _unplaceable(ray) as exc:
                    raise ClusterError(f"a worker could not be started: {_first_line(exc)}") from None
                except deaths as exc:
                    kill(actor)
                    start_failures += 1
                    if start_failures > max(3, pool["workers"]):
                        raise ClusterError(f"workers keep dying while they load the model: {_first_line(exc)}"
                                           ) from None
                    stats["worker_restarts"] += 1
                    start_worker()
                    continue
                if "error" in info:
                    raise ClusterError(f"a worker could not load the model: {info['error']}")
                start_failures = 0
                stats.setdefault("start_seconds", round(time.monotonic() - began, 3))
                release(actor)
                continue
            # 3b. a job has ended: recorded, or back in the queue when its worker died the first time
            actor, job, work, attempt = running.pop(ref)
            try:
                kind, entry = ray.get(ref)
            except deaths as exc:
                kill(actor)
                _remove_temporaries(work)
                stats["worker_restarts"] += 1
                if attempt < 2:
                    queue.appendleft((job, attempt + 1))
                    ledger.save(force=False)
                else:
                    ledger.record("failed", _entry(job, error=f"{job.label}: the worker died while restoring this "
                                                              f"file, twice ({_first_line(exc)})", attempts=attempt))
                    finished += 1
                if queue:
                    start_worker()
                continue
            except ray.exceptions.RayTaskError as exc:    # a failure outside restore_job's own reporting
                release(actor)
                ledger.record("failed", _entry(job, error=error_line(exc.cause or exc, job.label)))
                finished += 1
                continue
            ledger.record(kind, _as_given(job, work, entry))
            finished += 1
            release(actor)
    except KeyboardInterrupt:
        _cancel(ray, running, ledger)
        raise
    finally:
        for actor in actors:
            kill(actor)
        if running:                           # interrupted: let the kills land, then sweep their temporaries
            with contextlib.suppress(BaseException):
                pings = [actor.ping.remote() for actor, _, _, _ in running.values()]
                ray.wait(pings, num_returns=len(pings), timeout=5.0)
            for _, _, work, _ in running.values():
                _remove_temporaries(work)
        seconds = time.monotonic() - began
        stats["seconds"] = round(seconds, 3)
        stats["files_per_second"] = round(finished / seconds, 3) if seconds > 0 else None
        ledger.save()


def _cancel(ray, running, ledger):
    """Ctrl-C: cancel the calls in flight, give them ``CANCEL_GRACE_SECONDS`` to stop and clean up
    (a second Ctrl-C cuts that short), and record those that had finished all the same. The calls
    still in ``running`` afterwards are the ones the caller must kill."""
    for ref in running:
        with contextlib.suppress(Exception):
            ray.cancel(ref)
    with contextlib.suppress(KeyboardInterrupt):
        # an actor runs its calls in order: a ping returns once the cancelled call before it has
        pings = [actor.ping.remote() for actor, _, _, _ in running.values()]
        ray.wait(pings, num_returns=len(pings), timeout=CANCEL_GRACE_SECONDS)
    for ref, (actor, job, work, attempt) in list(running.items()):
        try:
            kind, entry = ray.get(ref, timeout=0)
        except Exception:
            kind = None                     # cancelled (or still running: killed by the caller)
        if kind == "cancelled" or kind is None:
            continue
        running.pop(ref)
        with contextlib.suppress(KeyboardInterrupt):
            ledger.record(kind, _as_given(job, work, entry))


def _first_line(exc):
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
