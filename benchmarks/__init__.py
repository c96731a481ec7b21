"""Memory and latency benchmarks of tilediff against the reference algorithm.

    python -m benchmarks --quick                   # small model, 2 steps, four small sizes (CPU, minutes)
    python -m benchmarks --model official --sizes 2000x3000 --steps 2 --repeat 3 --check
    python -m benchmarks --scaling                  # time and peak memory against image size

Every measured run (one image size, one mode, one repeat) happens in a fresh Python process
(``benchmarks.worker``), because a process's peak resident set only grows: runs sharing a process
would hide each other's peaks. The parent reads the child's own peak RSS from ``os.wait4`` (the
kernel's count, exact even when the child is killed) and samples VmHWM while it runs.

Modules: ``machine`` (what ran it), ``models`` (the model files measured), ``worker`` (one run in a
child), ``runner`` (spawning, OOM detection and prediction), ``analysis`` (medians, ratios, scaling
fits), ``report`` (table, JSON, markdown, plot). ``gpu_bench.py`` and ``gpu_check.sh`` beside them
are a separate kernel benchmark.
"""
