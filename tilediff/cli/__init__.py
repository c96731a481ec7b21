"""The ``tilediff`` command line (click): one module per command group.

restore.py  ``tilediff restore`` (images and folders)     models.py  ``tasks``, ``info``, ``convert``
demo.py     ``tilediff demo`` (the bundled example)        train.py   ``train``, ``eval``
bench.py    ``tilediff bench`` (the benchmark suite)       common.py  errors, progress bar
"""
from ..engine import host_memory

host_memory.configure()   # a program, not a library: tune the allocator before torch loads (host_memory)

import click  # noqa: E402

from .._version import __version__  # noqa: E402
from .bench import bench_cmd  # noqa: E402
from .common import CliError, fail  # noqa: E402,F401
from .demo import demo_cmd  # noqa: E402
from .models import convert_cmd, info_cmd, tasks_cmd  # noqa: E402
from .restore import restore_cmd  # noqa: E402


class _Main(click.Group):
    """The command group; an interrupt (Ctrl-C) ends any command with one line and exit status 130."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo("\ntilediff: interrupted", err=True)
            ctx.exit(130)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tilediff")
def main():
    """tilediff: tiled large-image restoration with Refusion (latent IR-SDE)."""


for command in (demo_cmd, restore_cmd, tasks_cmd, info_cmd, convert_cmd, bench_cmd):
    main.add_command(command)

# `tilediff train` and `tilediff eval` are guarded so that the other commands keep working where the
# training module (or its dependencies) is missing.
try:
    from .train import eval_cmd, train_cmd
except ImportError:
    pass
else:
    main.add_command(train_cmd)
    main.add_command(eval_cmd)


if __name__ == "__main__":
    main()
