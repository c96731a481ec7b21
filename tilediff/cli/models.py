"""``tilediff tasks``, ``tilediff info`` and ``tilediff convert``: the tasks and the model files."""
from pathlib import Path

import click

from ..tasks import TASKS
from .common import fail


@click.command("tasks")
def tasks_cmd():
    """List the restoration tasks and whether weights are shipped for them."""
    for task in TASKS.values():
        shipped = "shipped weights" if task.shipped_weights() else "needs --weights"
        space = "latent" if task.latent else "pixel"
        click.echo(f"{task.name:10} {task.variant:7} {space:6} {shipped:16} {task.description}")


@click.command("info")
@click.argument("model_file", type=click.Path(dir_okay=False, path_type=Path))
def info_cmd(model_file):
    """Print what a model file holds."""
    from ..weights import ModelFileError, describe
    try:
        click.echo(describe(model_file))
    except ModelFileError as e:
        fail(e)


@click.command("convert")
@click.argument("noise_checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--compressor", "compressor", type=click.Path(dir_okay=False, path_type=Path),
              help="The compressor (U-Net) checkpoint of a latent task (dehaze, bokeh).")
@click.option("--task", type=click.Choice(sorted(TASKS)), help="Task; inferred from the network when omitted.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Model file to write (default: NOISE_CHECKPOINT with .safetensors).")
@click.option("--description", default="", help="Free text stored in the metadata.")
@click.option("--overwrite", is_flag=True, help="Replace the output if it exists (never one of the checkpoints).")
def convert_cmd(noise_checkpoint, compressor, task, output, description, overwrite):
    """Convert reference .pth checkpoints into one tilediff model file."""
    from ..weights import ModelFileError, convert, describe
    try:
        path = convert(noise_checkpoint, compressor, task=task, output=output, description=description,
                       overwrite=overwrite)
    except ModelFileError as e:
        fail(e)
    click.echo(f"wrote {path}")
    click.echo(describe(path))
