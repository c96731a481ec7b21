"""Folders on Ray (tilediff.cluster): a local Ray cluster with 2 CPUs and 2 worker actors.

The network is the golden tiny dehazing pair, the images 32×48 PNGs, the runs 2 steps; the
single-process batch of the same folder is the reference. The first test starts Ray through
``ray="local"`` (and checks it is shut down again); the others share one instance (``ray_cluster``),
shut down at the end of the module.
"""
import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

ray = pytest.importorskip("ray")

from conftest import torch_threads
import tilediff                                   # noqa: E402
from tilediff.cli import main                     # noqa: E402
from tilediff.cluster import ClusterError, plan_pool  # noqa: E402
from tilediff.io import read_image                # noqa: E402

NAMES = [f"photo{i}.png" for i in range(6)]


# ---- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The driver's own (reference) restorations single-threaded, as the workers' are (2 CPUs, 2 workers)."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def model(dehaze_model):
    return dehaze_model


def image(seed, h=32, w=48):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Six good PNGs and one corrupt file."""
    src = tmp_path_factory.mktemp("photos")
    for i, name in enumerate(NAMES):
        Image.fromarray(image(i)).save(src / name)
    (src / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a PNG any more")
    return src


@pytest.fixture(scope="module")
def reference(model, folder, tmp_path_factory):
    """The single-process batch of ``folder``: its summary and output folder."""
    out = tmp_path_factory.mktemp("single")
    return tilediff.restore_folder(folder, out, task="dehaze", weights=model, steps=2), out


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray instance (2 CPUs) for the tests after the first; shut down after the module."""
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                 object_store_memory=128 << 20)
    yield ray
    ray.shutdown()


def pixels(path):
    return read_image(path).rgb.astype(np.int16)


def temp_files(folder):
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def summary_of(folder):
    return json.loads((folder / "tilediff_summary.json").read_text())


# ---- (a) a local cluster restores what the single-process batch restores ---------------------

def test_local_cluster_matches_the_single_process_batch(model, folder, reference, tmp_path):
    single, single_out = reference
    assert not ray.is_initialized()
    summary = tilediff.restore_folder(folder, tmp_path, task="dehaze", weights=model, steps=2,
                                      ray="local", workers=2)
    assert not ray.is_initialized()                       # the instance it started is shut down again

    assert summary["counts"] == {"succeeded": 6, "failed": 1, "skipped": 0, "total": 7}
    assert set(summary) == set(single) | {"ray"}           # the single-process layout, plus "ray"
    assert summary == summary_of(tmp_path) | {"summary_path": str(tmp_path / "tilediff_summary.json")}
    assert summary["options"] == single["options"] and summary["weights"] == single["weights"]
    assert summary["interrupted"] is False and summary["finished"]
    assert summary["ray"]["workers"] == 2 and summary["ray"]["device"] == "cpu"
    assert summary["ray"]["worker_restarts"] == 0
    # the one bad file: the single-process batch's error line, word for word
    assert [e["error"] for e in summary["failed"]] == [e["error"] for e in single["failed"]]
    assert "corrupt.png" in summary["failed"][0]["error"]
    # the same entries (paths as given, size, bytes), from two workers
    by_input = {e["input"]: e for e in summary["succeeded"]}
    for ref in single["succeeded"]:
        entry = by_input[ref["input"]]
        assert entry["output"] == ref["output"].replace(str(single_out), str(tmp_path))
        assert entry["size"] == [48, 32] and entry["bytes"] > 0
        assert set(ref) <= set(entry)
    assert len({e["worker"] for e in summary["succeeded"]}) == 2
    # the same pixels: position-keyed noise, the same single-threaded arithmetic
    worst = max(int(np.abs(pixels(tmp_path / f"photo{i}_dehaze.png") -
                           pixels(single_out / f"photo{i}_dehaze.png")).max()) for i in range(6))
    assert worst <= 2
    assert worst == 0, f"outputs differ by up to {worst}/255 from the single-process batch"
    assert not temp_files(tmp_path)


# ---- (b) a rerun resumes: the six are skipped --------------------------------------------------

def test_rerun_skips_what_exists(model, folder, reference, ray_cluster):
    _, single_out = reference
    summary = tilediff.restore_folder(folder, single_out, task="dehaze", weights=model, steps=2,
                                      ray="local", workers=2)
    assert summary["counts"] == {"succeeded": 0, "failed": 1, "skipped": 6, "total": 7}
    assert all(e["reason"] == "output exists" for e in summary["skipped"])
    assert ray.is_initialized()                          # an instance it did not start is left running

    # nothing left to do at all (the corrupt file renamed away): no model, no workers
    done = single_out.parent / "done"
    done.mkdir()
    for name in NAMES[:2]:
        (done / name).write_bytes((folder / name).read_bytes())
        (done / name.replace(".png", "_dehaze.png")).write_bytes(b"exists")
    summary = tilediff.restore_folder(done, done, task="dehaze", weights=model, ray="auto")
    assert summary["counts"]["skipped"] == 2 and summary["ray"]["workers"] == 0


# ---- (c) a worker that dies mid-file -------------------------------------------------------------

def test_dead_worker_file_is_retried_once(model, reference, ray_cluster, tmp_path, monkeypatch):
    _, single_out = reference
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(image(0)).save(src / "fine.png")
    Image.fromarray(image(1)).save(src / "once.png")       # kills its worker the first time only
    Image.fromarray(image(2)).save(src / "always.png")     # kills every worker that takes it
    monkeypatch.setenv("TILEDIFF_TEST_CRASH_ONCE", "once.png")
    monkeypatch.setenv("TILEDIFF_TEST_CRASH_ALWAYS", "always.png")
    events = []
    summary = tilediff.restore_folder(src, tmp_path / "out", task="dehaze", weights=model, steps=2, ray="local",
                                      workers=2, on_file=lambda event, entry: events.append((event, entry["input"])))

    assert summary["counts"] == {"succeeded": 2, "failed": 1, "skipped": 0, "total": 3}
    once = next(e for e in summary["succeeded"] if e["input"].endswith("once.png"))
    assert once["attempts"] == 2
    assert np.array_equal(pixels(once["output"]), pixels(single_out / "photo1_dehaze.png"))
    (failed,) = summary["failed"]
    assert failed["input"].endswith("always.png") and failed["attempts"] == 2
    assert "the worker died while restoring this file, twice" in failed["error"]
    assert summary["ray"]["worker_restarts"] == 3         # once.png once, always.png twice
    assert not (tmp_path / "out" / "always_dehaze.png").exists() and not temp_files(tmp_path)
    # on_file: a start per attempt, one outcome per file
    assert events.count(("start", str(src / "always.png"))) == 2
    assert [e for e in events if e[0] != "start"].count(("failed", str(src / "always.png"))) == 1


# ---- (d) the command line ------------------------------------------------------------------------

def test_cli_restores_a_folder_on_ray(model, folder, ray_cluster, tmp_path):
    out = tmp_path / "B"
    result = CliRunner().invoke(main, ["restore", str(folder), "--task", "dehaze", "--weights", str(model),
                                       "--steps", "2", "--out-dir", str(out), "--ray", "local"])
    assert result.exit_code == 1, result.output
    summary = summary_of(out)
    assert summary["counts"] == {"succeeded": 6, "failed": 1, "skipped": 0, "total": 7}
    errors = [line for line in result.stderr.splitlines() if line.startswith("tilediff: error:")]
    assert len(errors) == 1 and "corrupt.png" in errors[0]
    assert sum("photo" in line and "_dehaze.png" in line for line in result.stderr.splitlines()) >= 6
    assert "6 restored, 1 failed, 0 skipped" in result.stderr
    assert sorted(p.name for p in out.glob("*_dehaze.png")) == sorted(n.replace(".png", "_dehaze.png")
                                                                        for n in NAMES)


def test_cli_ray_errors(model, folder, tmp_path):
    one = folder / NAMES[0]
    for args, expected in [
        ([one, "--ray", "local"], "--ray"),                     # file inputs only
        ([folder, "--workers", "2"], "--workers"),               # a pool option without --ray
        ([folder, "--gpus-per-worker", "1"], "--gpus-per-worker"),
    ]:
        result = CliRunner().invoke(main, ["restore", *map(str, args), "--task", "dehaze", "--weights", str(model),
                                           "--out-dir", str(tmp_path)])
        assert result.exit_code == 1, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("tilediff: error:") and expected in lines[0], result.stderr
    assert not list(tmp_path.iterdir())


# ---- Ctrl-C ----------------------------------------------------------------------------------------

def test_interrupt_cancels_and_leaves_no_partial_output(model, folder, ray_cluster, tmp_path):
    def stop(event, entry):
        if event == "succeeded":
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        tilediff.restore_folder(folder, tmp_path, task="dehaze", weights=model, steps=2, ray="local",
                                workers=2, on_file=stop)
    summary = summary_of(tmp_path)
    assert summary["interrupted"] is True and summary["finished"]
    assert 1 <= summary["counts"]["succeeded"] < 6
    for entry in summary["succeeded"]:
        assert read_image(entry["output"]).shape == (32, 48)
    assert not temp_files(tmp_path)
    # a rerun finishes the batch, skipping what the interrupted one wrote
    summary = tilediff.restore_folder(folder, tmp_path, task="dehaze", weights=model, steps=2, ray="local", workers=2)
    assert summary["counts"]["succeeded"] + summary["counts"]["skipped"] == 6
    assert summary["counts"]["skipped"] >= 1 and summary["interrupted"] is False


# ---- the pool plan, and no Ray without --ray ------------------------------------------------------

def test_pool_plan():
    gpus = {"CPU": 128.0, "GPU": 8.0}
    assert plan_pool(gpus) == {"workers": 8, "gpus_per_worker": 1.0, "threads_per_worker": 16,
                               "cpus_per_worker": 16.0, "device": "cuda"}
    half = plan_pool(gpus, gpus_per_worker=0.5)
    assert half["workers"] == 16 and half["cpus_per_worker"] == 8
    assert plan_pool(gpus, workers=4)["workers"] == 4
    # 2 nodes x 8 GPUs and a CPU-only head: each worker's CPUs fit on a GPU node
    two = plan_pool({"CPU": 160.0, "GPU": 16.0}, nodes=[{"CPU": 32.0}, {"CPU": 64.0, "GPU": 8.0},
                                                         {"CPU": 64.0, "GPU": 8.0}])
    assert two["workers"] == 16 and two["cpus_per_worker"] == 8 and two["threads_per_worker"] == 8
    assert plan_pool({"CPU": 4.0, "GPU": 8.0})["cpus_per_worker"] == 1
    cpu = plan_pool(gpus, device="cpu")
    assert cpu["device"] == "cpu" and cpu["gpus_per_worker"] == 0 and cpu["workers"] == 32
    assert plan_pool({"CPU": 2.0}, workers=2) == {"workers": 2, "gpus_per_worker": 0.0, "threads_per_worker": 1,
                                                  "cpus_per_worker": 1.0, "device": "cpu"}
    assert plan_pool({"CPU": 16.0}, threads_per_worker=8)["workers"] == 2
    with pytest.raises(ClusterError, match="no GPUs"):
        plan_pool({"CPU": 4.0}, gpus_per_worker=1)
    with pytest.raises(ValueError, match="device cuda"):
        plan_pool({"CPU": 4.0}, device="cuda")
    with pytest.raises(ValueError, match="workers"):
        plan_pool({"CPU": 4.0}, workers=0)


def test_ray_is_not_imported_without_ray():
    code = ("import sys, tilediff, tilediff.batch, tilediff.cli, tilediff.cli.restore, tilediff.cluster; "
            "print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
