"""``tilediff bench``: the benchmark suite of a source checkout (``python -m benchmarks``)."""
import subprocess
import sys
from pathlib import Path

import click

from .common import fail


@click.command("bench", context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                         "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench_cmd(args):
    """Memory and latency benchmarks: runs `python -m benchmarks ARGS` (try `tilediff bench --help`).

    The suite lives in the repository's benchmarks/ folder (it is not installed with the package), so
    this works from a source checkout, e.g. after `pip install -e .`.
    """
    root = Path(__file__).resolve().parents[2]
    if not (root / "benchmarks" / "__main__.py").exists():
        fail(f"tilediff bench needs a source checkout: {root / 'benchmarks'} does not exist "
             "(clone the repository, `pip install -e .`, then run it again)")
    runner = ("import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); sys.argv[0] = 'tilediff bench'; "
              "runpy.run_module('benchmarks', run_name='__main__', alter_sys=True)")
    sys.exit(subprocess.call([sys.executable, "-c", runner, str(root), *args]))
