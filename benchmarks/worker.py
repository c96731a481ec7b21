"""One measured run in a fresh process: a TIFF streamed through the engine to a TIFF, timed per stage.

    python -m benchmarks.worker SPEC.json RESULT.json

SPEC holds model (a model file), image (a TIFF), output (where to write), mode, memory_budget,
steps, device, precision, seed, tile, overlap, threads, warmup ('small' | 'full' | 'none').
The run: load the model; warm up (an image of at most 256×256 pixels, one step, same mode, so
that thread pools and lazy initialisation are not timed); then the input opened as a region source,
restored by ``engine.restore_bands`` and written band by band (``io.open_sink``), as the command line
does, timing each stage with the wall clock (and the process CPU clock); the write interleaves with
the decode and is what the run's time leaves beyond read, encode, sample and decode. Peak memory: ``ru_maxrss`` of this process (exact, but it
includes the model and the warm-up, both smaller than the run), a 20 ms sampler of VmRSS that
splits the peak by stage, and on CUDA ``max_memory_allocated`` / ``max_memory_reserved`` of the
timed run. A MemoryError or an out-of-memory RuntimeError is reported as status 'oom'.
"""
import gc
import json
import os
import resource
import sys
import threading
import time
import traceback

STAGES = ("read", "encode", "sample", "decode", "write")


def rss_bytes(field="VmRSS"):
    """VmRSS (current) or VmHWM (peak) of this process from /proc, in bytes (0 if unknown)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def maxrss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024   # KiB on Linux


class RssSampler(threading.Thread):
    """Samples VmRSS and the process CPU clock every ``interval`` seconds: (perf_counter time,
    bytes, CPU seconds) triples; so each stage's peak and CPU time can be read off afterwards."""

    def __init__(self, interval=0.02):
        super().__init__(daemon=True)
        self.interval = interval
        self.samples = []
        self._stop_event = threading.Event()

    def run(self):
        while not self._stop_event.is_set():
            self.samples.append((time.perf_counter(), rss_bytes(), time.process_time()))
            self._stop_event.wait(self.interval)

    def stop(self):
        self._stop_event.set()
        self.join()
        self.samples.append((time.perf_counter(), rss_bytes(), time.process_time()))

    def peak_between(self, t0, t1):
        """The largest sample in [t0, t1]; for a window shorter than the interval, the next sample."""
        values = [v for t, v, _ in self.samples if t0 <= t <= t1]
        if not values:
            values = [v for t, v, _ in self.samples if t >= t1][:1]
        return max(values) if values else None

    def cpu_between(self, t0, t1):
        """Process CPU seconds between the samples nearest to t0 and t1 (± one interval)."""
        if not self.samples:
            return None

        def at(t):
            return min(self.samples, key=lambda s: abs(s[0] - t))[2]
        return max(0.0, at(t1) - at(t0))

    def timeline(self, t0, points=200):
        """At most ``points`` (seconds since t0, MB) pairs: each the maximum of its bucket."""
        samples = [(t - t0, v) for t, v, _ in self.samples if t >= t0]
        if not samples:
            return []
        step = max(1, -(-len(samples) // points))
        return [(round(samples[i][0], 3), round(max(v for _, v in samples[i:i + step]) / 2**20, 1))
                for i in range(0, len(samples), step)]


def is_oom(err):
    return isinstance(err, MemoryError) or (isinstance(err, RuntimeError) and "memory" in str(err).lower())


def measure(spec):
    # the host allocator tuned before torch loads, as the command line does (tilediff.cli): torch
    # reads its huge-page setting once, when it starts, so a later configure() cannot turn it on
    from tilediff.engine import host_memory
    allocator = host_memory.configure()

    import numpy as np
    import torch

    from tilediff import engine
    from tilediff.io import open_sink, open_source, read_image
    from tilediff.options import RestoreOptions
    from tilediff.weights import load_model

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    device = torch.device(spec["device"])
    cuda = device.type == "cuda"
    result = {"pid": os.getpid(), "torch_threads": torch.get_num_threads(), "host_allocator": allocator}

    def options(**overrides):
        kw = dict(steps=spec["steps"], sampler=spec.get("sampler", "sde"), seed=spec.get("seed", 0),
                  tile=spec.get("tile"), overlap=spec.get("overlap"), mode=spec["mode"],
                  memory_budget=spec.get("memory_budget"), precision=spec.get("precision", "fp32"))
        kw.update(overrides)
        return RestoreOptions(**kw)

    result["code"] = _source_hashes()
    t0 = time.perf_counter()
    model = load_model(spec["model"], device="cpu")
    result["model_load_seconds"] = time.perf_counter() - t0
    result["rss_after_model_load_bytes"] = rss_bytes()

    warmup = spec.get("warmup", "small")
    t0 = time.perf_counter()
    if warmup == "small":
        h, w = spec.get("height", 256), spec.get("width", 256)
        x = torch.rand(1, 3, min(h, 256), min(w, 256), generator=torch.Generator().manual_seed(1))
        engine.restore_tensor(model, x, options(steps=1, tile=None, overlap=None), device)
        del x
    elif warmup == "full":
        image = read_image(spec["image"])
        x = torch.from_numpy(np.ascontiguousarray(image.rgb.transpose(2, 0, 1)))[None]
        engine.restore_tensor(model, x, options(), device)
        del x, image
    result["warmup"] = warmup
    result["warmup_seconds"] = time.perf_counter() - t0
    gc.collect()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    result["baseline_rss_bytes"] = rss_bytes()
    result["maxrss_before_run_bytes"] = maxrss_bytes()

    sampler = RssSampler()
    sampler.start()
    marks = {}
    cpu = {}
    seconds = {}
    try:
        start = time.perf_counter()
        cpu_start = time.process_time()

        # the streamed path, as `tilediff restore` runs it: the input read by regions, the output
        # written in bands as they are decoded (the write interleaves with the decode)
        source = open_source(spec["image"])
        marks["read"] = time.perf_counter()
        cpu["read"] = time.process_time() - cpu_start

        opts, stats = options(), {}
        c0 = time.process_time()
        sink = open_sink(spec["output"], like=source)
        finite = [True]

        def checked(bands):
            for y0, rows in bands:
                finite[0] &= bool(np.isfinite(rows).all())
                yield y0, rows
        bands = engine.restore_bands(model, source, opts, device, stats=stats, held_bytes=sink.held_bytes,
                                     scratch_dir=sink.scratch_dir)
        sink.write(checked(bands))
        if cuda:
            torch.cuda.synchronize(device)
        source.close()
        marks["write"] = time.perf_counter()
        cpu["engine+write"] = time.process_time() - c0
        cpu["total"] = time.process_time() - cpu_start
    finally:
        sampler.stop()

    engine_seconds = stats.get("seconds", {})
    seconds["read"] = marks["read"] - start
    for stage in ("encode", "sample", "decode"):
        seconds[stage] = float(engine_seconds.get(stage, float("nan")))
    seconds["total"] = marks["write"] - start
    # the decode's bands go to the writer as they come: write = what the engine's stages leave
    seconds["write"] = max(0.0, seconds["total"] - seconds["read"] - sum(seconds[s] for s in ("encode", "sample",
                                                                                                 "decode")))
    seconds["engine"] = seconds["total"] - seconds["read"] - seconds["write"]

    # stage windows on the wall clock: encode and sample follow the read; decode and write interleave
    sample_start = marks["read"] + seconds["encode"]
    decode_start = sample_start + seconds["sample"]
    windows = {"read": (start, marks["read"]), "encode": (marks["read"], sample_start),
               "sample": (sample_start, decode_start), "decode": (decode_start, marks["write"]),
               "write": (decode_start, marks["write"])}
    stage_peaks = {s: sampler.peak_between(*windows[s]) for s in STAGES}
    for stage in ("encode", "sample", "decode"):     # sampled: ± 20 ms at each end
        cpu[stage] = sampler.cpu_between(*windows[stage])

    plan = stats.get("plan")
    result.update({
        "status": "ok",
        "seconds": seconds,
        "cpu_seconds": cpu,
        "peak_rss_bytes": maxrss_bytes(),
        "vm_hwm_bytes": rss_bytes("VmHWM"),
        "sampled_peak_rss_bytes": max((v for _, v, _ in sampler.samples), default=0),
        "stage_peak_rss_bytes": stage_peaks,
        "rss_timeline_mb": sampler.timeline(start),
        "output_finite": finite[0],
        "image_shape": [source.height, source.width, 3],
        "plan": plan.describe() if plan is not None else None,
        "plan_fields": _plan_fields(plan),
    })
    if cuda:
        result["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
        result["cuda_max_reserved_bytes"] = torch.cuda.max_memory_reserved(device)
    return result


def _source_hashes():
    """Hashes of the engine sources this process imported (the engine may change between runs)."""
    import tilediff
    from benchmarks.machine import source_hashes
    return source_hashes(os.path.dirname(os.path.dirname(tilediff.__file__)))


def _plan_fields(plan):
    if plan is None:
        return None
    import dataclasses
    try:
        fields = dataclasses.asdict(plan)
    except TypeError:
        return None
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in fields.items()
            if isinstance(v, (int, float, str, bool, tuple, list, type(None)))}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    spec_path, result_path = argv
    with open(spec_path) as f:
        spec = json.load(f)
    try:
        result = measure(spec)
    except BaseException as err:  # noqa: BLE001 - every failure is reported to the parent
        result = {"status": "oom" if is_oom(err) else "error",
                  "error": f"{type(err).__name__}: {str(err).splitlines()[0][:500] if str(err) else ''}",
                  "traceback": traceback.format_exc()[-3000:]}
        if isinstance(err, KeyboardInterrupt):
            result["status"] = "interrupted"
    result["peak_rss_bytes"] = maxrss_bytes()
    result["vm_hwm_bytes"] = rss_bytes("VmHWM")
    tmp = result_path + ".part"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, result_path)
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
