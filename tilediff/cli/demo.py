"""``tilediff demo``: dehaze the bundled example photo with the shipped weights, in one command."""
from pathlib import Path

import click

from .common import fail, peak_memory_text, progress_printer, warn

EXAMPLE = Path(__file__).resolve().parents[1] / "data" / "example_hazy.png"


@click.command("demo")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=Path("example_dehazed.png"),
              show_default=True, help="Where to write the dehazed example.")
@click.option("--overwrite", is_flag=True, help="Replace the output if it exists.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def demo_cmd(output, overwrite, device, quiet):
    """Dehaze the bundled example (a hazy photo shipped with tilediff) with the shipped model and its
    defaults, and say where the input and the result are: the quickest check that everything works."""
    from ..batch import Job, TempSweeper, check_job_outputs, restore_job
    from ..restorer import Restorer
    from ..weights import ModelFileError
    job = Job((EXAMPLE,), (output,))
    try:
        check_job_outputs(job, overwrite=overwrite)    # before the model is loaded
    except OSError as e:
        fail(e)
    sweep = TempSweeper()
    progress, close = progress_printer(quiet)
    try:
        restorer = Restorer("dehaze", device=device)
        entry = restore_job(restorer, job, restorer.options(progress=progress), overwrite=overwrite, sweep=sweep)
    except (ModelFileError, ValueError, OSError) as e:
        fail(e)
    finally:
        close()
    warn(entry.get("warnings", ()))
    w, h = entry["size"]
    click.echo(f"dehazed {EXAMPLE} ({w}x{h}) with {restorer.weights.name} in {entry['seconds']:.1f} s "
               f"(peak memory {peak_memory_text(restorer.device)})")
    click.echo(f"wrote {output.resolve()}")
