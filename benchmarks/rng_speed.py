"""Time one step's noise for the latent of a 6000×4000 image (8×500×750): old cell generator vs Philox.

  python benchmarks/rng_speed.py [--repeat 5] [--threads N] [--shape 8x500x750]

'cells (old)' is the generator tilediff used before counter_rng: 64×64 cells, each a CPU
torch.Generator seeded with blake2b((seed, stream, step, row, col)), drawn on the host (reproduced
here, since the engine no longer has it). 'philox' is ``counter_rng.normal_region``. On CUDA the old
generator is also timed with its copy to the device (what the sampler waited for), and Philox drawn
on the device. Prints the median of ``--repeat`` runs in ms (after one warm-up run).
"""
import argparse
import hashlib
import os
import statistics
import time

import torch

from tilediff.engine.counter_rng import normal_region


def cell_noise(seed, step, channels, y0, y1, x0, x1, stream=0, batch_index=0, block=64):
    """The previous region_noise (tilediff.engine.rng before the Philox generator)."""
    out = torch.empty(channels, y1 - y0, x1 - x0)
    gen = torch.Generator()
    for row in range(y0 // block, (y1 - 1) // block + 1):
        for col in range(x0 // block, (x1 - 1) // block + 1):
            key = f"{seed}/{stream}.{batch_index}/{step}/{row}/{col}".encode()
            gen.manual_seed(int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") & ((1 << 63) - 1))
            cell = torch.randn(channels, block, block, generator=gen)
            cy0, cx0 = row * block, col * block
            ys, ye = max(y0, cy0), min(y1, cy0 + block)
            xs, xe = max(x0, cx0), min(x1, cx0 + block)
            out[:, ys - y0:ye - y0, xs - x0:xe - x0] = cell[:, ys - cy0:ye - cy0, xs - cx0:xe - cx0]
    return out


def median_ms(fn, repeat, sync=lambda: None):
    fn()
    sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--shape", default="8x500x750", help="CxHxW of the canvas")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    c, h, w = (int(v) for v in args.shape.split("x"))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"canvas {c}×{h}×{w}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"{os.cpu_count()} CPUs, load {load:.2f}, median of {args.repeat}")
    rows = [("cells (old), CPU", median_ms(lambda: cell_noise(0, 7, c, 0, h, 0, w), args.repeat)),
            ("philox, CPU", median_ms(lambda: normal_region(0, 0, 7, c, 0, h, 0, w, "cpu"), args.repeat))]
    if torch.cuda.is_available():
        dev = torch.device("cuda")
        sync = torch.cuda.synchronize
        rows += [("cells (old), CPU + copy to CUDA",
                  median_ms(lambda: cell_noise(0, 7, c, 0, h, 0, w).to(dev), args.repeat, sync)),
                 ("philox, CUDA", median_ms(lambda: normal_region(0, 0, 7, c, 0, h, 0, w, dev), args.repeat, sync))]
    for name, ms in rows:
        print(f"{name:34s} {ms:9.2f} ms")


if __name__ == "__main__":
    main()
