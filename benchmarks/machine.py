"""What the benchmark ran on: host, CPU, memory, device, library versions; a slug for file names."""
import datetime as _dt
import hashlib
import os
import platform
import re
import socket

GB = 1 << 30


def meminfo():
    """/proc/meminfo as {key: bytes} (empty where it cannot be read)."""
    values = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if parts:
                    values[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    except OSError:
        pass
    return values


def available_host_memory():
    """MemAvailable in bytes (the kernel's estimate of what a new process can use without swapping)."""
    info = meminfo()
    return info.get("MemAvailable", info.get("MemFree", 0))


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def slugify(text, limit=32):
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")[:limit] or "unknown"


def device_name(device):
    """'cpu' or the CUDA device's name (imports torch only for CUDA)."""
    if not str(device).startswith("cuda"):
        return "cpu"
    import torch
    return torch.cuda.get_device_name(torch.device(device))


def machine_slug(device):
    """hostname + 'cpu<N>' or the GPU name, e.g. 'vm-cpu2' or 'node7-nvidia-h100-80gb-hbm3'."""
    host = slugify(socket.gethostname().split(".")[0], 20)
    if str(device).startswith("cuda"):
        return f"{host}-{slugify(device_name(device))}"
    return f"{host}-cpu{os.cpu_count() or 0}"


def machine_info(device):
    import numpy
    import torch
    info = {
        "hostname": socket.gethostname(),
        "slug": machine_slug(device),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "mem_total_bytes": meminfo().get("MemTotal", 0),
        "mem_available_bytes_at_start": available_host_memory(),
        "loadavg_at_start": list(os.getloadavg()),
        "device": str(device),
        "device_name": device_name(device),
    }
    if str(device).startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        info["device_memory_bytes"] = props.total_memory
        info["cuda"] = torch.version.cuda
    return info


def code_version(repo):
    """The commit, whether the work tree differs from it, and hashes of the engine's source files
    (the engine changes often: results are only comparable for the same hashes)."""
    import subprocess
    info = {}
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True,
                                        text=True, timeout=10).stdout.strip() or None
        info["dirty"] = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                                            capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        info["commit"] = None
    info.update(source_hashes(repo))
    return info


def source_hashes(repo):
    """Short SHA-256 of each source the timings depend on: the engine package, tiling and the SDE."""
    root = os.path.join(repo, "tilediff")
    names = [os.path.join("engine", n) for n in sorted(os.listdir(os.path.join(root, "engine"))) if n.endswith(".py")]
    hashes = {}
    for name in names + ["tiling.py", "sde.py"]:
        with open(os.path.join(root, name), "rb") as f:
            hashes[name] = hashlib.sha256(f.read()).hexdigest()[:12]
    return hashes


def timestamp():
    """Local date and time for file names: 2025-11-26_1440."""
    return _dt.datetime.now().strftime("%Y-%m-%d_%H%M")
