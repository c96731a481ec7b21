"""Running one measurement in a child process, and deciding which runs not to start.

``run_child`` starts ``python -m benchmarks.worker`` and reaps it with ``os.wait4``. The peak
resident set is the VmHWM the worker reports at its end (its address space is fresh from exec);
the rusage's ru_maxrss is kept as a cross-check only, since Linux carries it over exec from the
parent's resident set at fork. While the child runs, VmHWM is polled from /proc (the peak of a
child killed before it could report). A child killed by SIGKILL
that did not time out was, on Linux, almost always the OOM killer: it is recorded as 'oom-killed'.

``predict_reference_peak`` says how much memory the reference (whole-image) algorithm will need at
a size, from this session's own reference measurements (a straight line through peak RSS against
megapixels) or, before there are two, from REFUSION.md (22 GB at 24 MP, 6 GB at 6 MP on CPU).
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
GB = 1 << 30
MB = 1 << 20

# REFUSION.md, "Cost of the reference": official dehazing configuration, CPU, fp32
REFERENCE_POINTS = ((6.0, 6 * GB), (24.0, 22 * GB))


def proc_status(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


TEST_TILE = 256


def synthetic_tile(y0, x0, h, w, dtype=np.uint8, seed=0):
    """One tile of a deterministic synthetic photo-like image (gradients, waves, noise): any tile can
    be made on its own, so an image of any size is written without holding it."""
    ys = np.arange(y0, y0 + h, dtype=np.float32)[:, None]
    xs = np.arange(x0, x0 + w, dtype=np.float32)[None, :]
    rng = np.random.default_rng([seed, y0, x0])
    planes = []
    for c in range(3):
        base = (0.45 + 0.2 * np.sin(xs / (97 + 13 * c) + ys / 53) + 0.15 * np.cos(ys / (211 + 7 * c) - xs / 389)
                + 0.1 * np.sin((xs + ys) / 4000.0 + c))
        planes.append(base + rng.normal(0, 0.03, (h, w)).astype(np.float32))
    image = np.clip(np.stack(planes, -1), 0, 1)
    return np.round(image * np.iinfo(dtype).max).astype(dtype)


def make_test_image(path, width, height, seed=0, dtype=np.uint8, compression=None, bigtiff=False):
    """A synthetic RGB TIFF in tiles of 256 (BigTIFF when asked or past 4 GB), written tile by tile
    from ``synthetic_tile``: an image of any size is made without being held, and a tiled input is
    what the engine streams by regions (a one-strip TIFF would be decoded whole)."""
    import tifffile

    path = Path(path)
    if path.exists():
        return path

    def tiles():
        for y0 in range(0, height, TEST_TILE):
            for x0 in range(0, width, TEST_TILE):
                tile = np.zeros((TEST_TILE, TEST_TILE, 3), dtype)
                h, w = min(TEST_TILE, height - y0), min(TEST_TILE, width - x0)
                tile[:h, :w] = synthetic_tile(y0, x0, h, w, dtype, seed)
                yield tile

    nbytes = width * height * 3 * np.dtype(dtype).itemsize
    partial = path.with_name(path.stem + ".partial.tif")
    tifffile.imwrite(partial, tiles(), shape=(height, width, 3), dtype=dtype, tile=(TEST_TILE, TEST_TILE),
                     photometric="rgb", compression=compression, predictor=2 if compression else None,
                     bigtiff=bigtiff or nbytes > 2 ** 32 - 2 ** 25)
    os.replace(partial, path)
    return path


def reap_polling(proc, start, timeout=None, poll=0.05):
    """Wait for ``proc`` with ``os.wait4``, polling its VmHWM from /proc meanwhile (SIGKILL once it
    runs ``timeout`` seconds past ``start``) → (wait status, rusage, polled VmHWM, timed out?)."""
    hwm, timed_out = 0, False
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            return status, usage, hwm, timed_out
        hwm = max(hwm, proc_status(proc.pid, "VmHWM"))
        if timeout and time.perf_counter() - start > timeout and not timed_out:
            timed_out = True
            os.kill(proc.pid, signal.SIGKILL)
        time.sleep(poll)


def run_child(spec, workdir, timeout=None, poll=0.05):
    """Run ``spec`` in a fresh worker process; returns the worker's result dict plus what the
    parent saw: status (ok | oom | oom-killed | timeout | error), child_maxrss_bytes (wait4),
    polled_hwm_bytes, exit (code or signal), wall_seconds."""
    workdir = Path(workdir)
    tag = f"run{int(time.time() * 1e6)}"
    spec_path, result_path, log_path = (workdir / f"{tag}.spec.json", workdir / f"{tag}.result.json",
                                        workdir / f"{tag}.log")
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    start = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "benchmarks.worker", str(spec_path), str(result_path)],
                                cwd=str(REPO), env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    try:
        status, usage, hwm, timed_out = reap_polling(proc, start, timeout, poll)
    except BaseException:
        if proc.returncode is None:
            try:
                os.kill(proc.pid, signal.SIGKILL)
                os.waitpid(proc.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        proc.returncode = -9
        raise
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start

    result = {}
    if result_path.exists():
        try:
            result = json.loads(result_path.read_text())
        except ValueError:
            result = {}
    rc = proc.returncode
    result["child_maxrss_bytes"] = usage.ru_maxrss * 1024 if usage is not None else None
    result["child_cpu_seconds"] = (usage.ru_utime + usage.ru_stime) if usage is not None else None
    result["polled_hwm_bytes"] = hwm
    result["exit"] = rc if rc >= 0 else f"signal {-rc} ({signal.Signals(-rc).name})"
    result["process_wall_seconds"] = wall
    if timed_out:
        result["status"] = "timeout"
        result["error"] = f"killed after the {timeout:.0f} s timeout"
    elif rc == -signal.SIGKILL and result.get("status") != "ok":
        result["status"] = "oom-killed"
        result["error"] = ("killed by SIGKILL (most likely the kernel's OOM killer) at "
                           f"{max(hwm, result['child_maxrss_bytes'] or 0) / GB:.2f} GB resident")
    elif not result.get("status"):
        result["status"] = "error"
        result["error"] = f"worker exited with {result['exit']} without a result"
    if result["status"] != "ok":
        try:
            result["log_tail"] = log_path.read_text(errors="replace")[-2000:]
        except OSError:
            pass
    # The child's own VmHWM is its peak (a fresh address space at exec). ru_maxrss is not: Linux
    # keeps it across exec, so it is at least the parent's resident set at fork. A child killed
    # before it could report: the VmHWM polled from /proc.
    if result.get("vm_hwm_bytes"):
        result["peak_rss_bytes"] = result["vm_hwm_bytes"]
    elif hwm:
        result["peak_rss_bytes"] = hwm
    for p in (spec_path, result_path, log_path):
        try:
            p.unlink()
        except OSError:
            pass
    return result


def fit_line(xs, ys):
    """Least squares y = a + b·x → (a, b, r²); needs two distinct xs."""
    x = np.asarray(xs, float)
    y = np.asarray(ys, float)
    b, a = np.polyfit(x, y, 1)
    ss_res = float(((y - (a + b * x)) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return float(a), float(b), (1.0 - ss_res / ss_tot) if ss_tot > 0 else 1.0


def predict_reference_peak(megapixels, measured):
    """(bytes, basis) the reference needs at ``megapixels``; ``measured``: [(megapixels, peak bytes)] of
    this session's successful reference runs. With two sizes or more: the larger of a least-squares
    line and the line through the two largest sizes (a convex curve would make the first
    under-predict); with one: that point and REFUSION.md's slope; with none: REFUSION.md."""
    points = {}
    for mp, peak in measured:
        points[mp] = max(points.get(mp, 0), peak)
    (x0, y0), (x1, y1) = REFERENCE_POINTS
    refusion_slope = (y1 - y0) / (x1 - x0)
    if len(points) >= 2:
        a, b, _ = fit_line(list(points), list(points.values()))
        (m1, p1), (m2, p2) = sorted(points.items())[-2:]
        last = p2 + (p2 - p1) / (m2 - m1) * (megapixels - m2)
        return max(a + b * megapixels, last), f"lines through {len(points)} measured reference peaks"
    if points:
        mp, peak = next(iter(points.items()))
        return peak + refusion_slope * (megapixels - mp), "one measured reference peak + REFUSION.md's slope"
    return y0 + refusion_slope * (megapixels - x0), "REFUSION.md (6 GB at 6 MP, 22 GB at 24 MP)"
