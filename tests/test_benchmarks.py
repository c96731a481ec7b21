"""Smoke tests of the benchmark harness (benchmarks/): one tiny size, one step, the small model."""
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import __main__ as bench  # noqa: E402
from benchmarks import runner  # noqa: E402

STAGES = ("read", "encode", "sample", "decode", "write", "total")


def _report(out_dir):
    files = sorted(Path(out_dir).glob("*.json"))
    assert len(files) == 1, files
    assert files[0].with_suffix(".md").exists()
    return json.loads(files[0].read_text())


def test_harness_measures_both_modes_in_fresh_processes(tmp_path):
    rc = bench.main(["--model", "small", "--sizes", "96x64", "--steps", "1", "--repeat", "1",
                     "--out-dir", str(tmp_path), "--no-plot", "--check", "--max-memory-ratio", "100",
                     "--max-time-ratio", "100"])
    assert rc == 0
    report = _report(tmp_path)
    assert report["machine"]["slug"] and report["settings"]["steps"] == 1
    results = {(r["size"], r["config"]): r for r in report["results"]}
    assert set(results) == {("96x64", "whole"), ("96x64", "auto")}
    for r in results.values():
        assert r["status"] == "ok", r
        assert set(STAGES) <= set(r["seconds"]) and all(r["seconds"][s] >= 0 for s in STAGES)
        assert r["peak_rss_bytes"] > 100 << 20            # torch alone is resident
        assert 0 < r["baseline_rss_bytes"] <= r["peak_rss_bytes"]
        assert r["throughput_mps"] > 0 and r["output_finite"]
        assert r["plan"] and r["megapixels"] == pytest.approx(r["width"] * r["height"] / 1e6)
    assert "whole image" in results[("96x64", "whole")]["plan"]
    pids = {run["pid"] for run in report["runs"]}
    assert len(pids) == len(report["runs"]) == 2 and os.getpid() not in pids
    for ratio in report["ratios"]:
        assert ratio["config"] == "auto"
        for key in ("time_ratio", "time_ratio_paired", "cpu_time_ratio", "peak_rss_ratio", "working_rss_ratio"):
            assert ratio[key] > 0, key
        assert ratio["check"]["passed"]
    assert report["check"]["passed"] and report["check"]["compared"] == 1
    assert "scaling" not in report                     # one size: no fit
    md = next(Path(tmp_path).glob("*.md")).read_text()
    assert "Tiled / reference" in md and "96x64" in md


def test_reference_predicted_out_of_memory_is_skipped_not_run(tmp_path):
    rc = bench.main(["--model", "small", "--sizes", "64x64", "--modes", "whole", "--steps", "1", "--repeat", "2",
                     "--oom-margin", "100000G", "--out-dir", str(tmp_path), "--no-plot"])
    assert rc == 0
    report = _report(tmp_path)
    (result,) = report["results"]
    assert result["status"] == "skipped" and result["error"].startswith("skipped: predicted OOM")
    assert len(report["runs"]) == 1 and "pid" not in report["runs"][0]


def test_killed_and_timed_out_children_are_classified(tmp_path):
    spec = {"model": "none", "image": "none", "output": "none", "mode": "whole", "steps": 1, "device": "cpu"}
    timed = runner.run_child(spec, tmp_path, timeout=0.3)
    assert timed["status"] == "timeout" and timed["exit"].startswith("signal 9")

    def kill_soon():
        time.sleep(0.3)
        for p in Path("/proc").iterdir():
            if p.name.isdigit():
                try:
                    cmd = (p / "cmdline").read_bytes()
                except OSError:
                    continue
                if b"benchmarks.worker" in cmd and str(tmp_path).encode() in cmd:
                    os.kill(int(p.name), 9)

    threading.Thread(target=kill_soon, daemon=True).start()
    killed = runner.run_child(spec, tmp_path, timeout=60)
    assert killed["status"] == "oom-killed" and "OOM killer" in killed["error"]
    assert killed["child_maxrss_bytes"] > 0
    broken = runner.run_child(spec, tmp_path, timeout=60)          # no such model file: reported, not raised
    assert broken["status"] == "error" and broken["error"]


def test_parsing_and_prediction():
    assert bench.parse_size("6000x4000") == (6000, 4000)
    assert bench.parse_bytes("1.5G") == int(1.5 * 2**30) and bench.parse_bytes("800M") == 800 << 20
    configs = bench.parse_configs("auto,whole", "2G")
    assert [c[0] for c in configs] == ["whole", "auto", "auto@2G"] and configs[2][2] == 2 << 30
    gb = 2**30
    predicted, basis = runner.predict_reference_peak(24.0, [])
    assert predicted == pytest.approx(22 * gb) and "REFUSION" in basis
    predicted, _ = runner.predict_reference_peak(3.0, [(1.0, 1 * gb), (2.0, 2 * gb)])
    assert predicted == pytest.approx(3 * gb)


def test_tilediff_bench_runs_the_suite_and_bad_options_give_one_error_line(tmp_path):
    import subprocess
    cli = [sys.executable, "-c", "from tilediff.cli import main; main()", "bench"]
    shown = subprocess.run(cli + ["--help"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert shown.returncode == 0 and "--quick" in shown.stdout and "--scaling" in shown.stdout
    bad = subprocess.run(cli + ["--sizes", "10y3", "--out-dir", str(tmp_path)], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].endswith("size '10y3': expected WIDTHxHEIGHT, e.g. 6000x4000")
    assert not list(tmp_path.glob("*.json"))


def test_test_image_is_tiled_and_made_tile_by_tile(tmp_path):
    """The benchmarks' input is a tiled TIFF whose every tile is the generator's tile on its own
    (so an image of any size is written without being held), in the asked sample type."""
    import tifffile

    from benchmarks.runner import make_test_image, synthetic_tile
    path = make_test_image(tmp_path / "in.tif", 600, 300, dtype=np.uint16, compression="zlib")
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        assert page.is_tiled and page.shape == (300, 600, 3) and page.dtype == np.uint16
        image = page.asarray()
    np.testing.assert_array_equal(image[256:300, 512:600], synthetic_tile(256, 512, 44, 88, np.uint16))
    assert 0.2 < image.mean() / 65535 < 0.8 and image.std() > 1000
    assert not list(tmp_path.glob("*.partial.tif"))
