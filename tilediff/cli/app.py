"""The ``tilediff`` click group with every command (imported by ``tilediff.cli.main`` on first use).

Importing this module imports click, numpy, the io modules and, through ``tilediff train``, torch: it
takes a second or two, which is why the console entry point (``tilediff.cli.main``) is a light
object that installs the signal handlers first and imports this module inside its own
KeyboardInterrupt handler.
"""
import click

from .._version import __version__
from .bench import bench_cmd
from .common import interrupted_exit
from .demo import demo_cmd
from .models import convert_cmd, info_cmd, tasks_cmd
from .restore import restore_cmd


class _Main(click.Group):
    """The command group. An interrupt (Ctrl-C, SIGTERM) ends any command with one line and exit
    status 128 + the signal number (130, 143); a malformed command line with one line and exit 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as e:
            ctx.exit(interrupted_exit(e))
        except click.UsageError as e:
            where = e.ctx.command_path if e.ctx is not None else "tilediff"
            click.echo(f"tilediff: error: {' '.join(e.format_message().split())} (see '{where} --help')",
                       err=True)
            ctx.exit(2)


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
