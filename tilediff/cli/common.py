"""What every command shares: one-line errors and warnings, interrupts, the progress bar, the
peak-memory text."""
import sys

import click


class CliError(click.ClickException):
    """One clear line on stderr and exit status 1."""

    def show(self, file=None):
        click.echo(f"tilediff: error: {self.format_message()}", err=True)


def fail(message):
    """Stop the command with ``tilediff: error: MESSAGE`` (its first line) and exit status 1."""
    raise CliError(str(message).splitlines()[0] if str(message) else "failed")


def interrupted_exit(exc):
    """Print the one line an interrupted command ends with; returns its exit status (128 + the
    signal: 130 for Ctrl-C / SIGINT, 143 for SIGTERM)."""
    from . import _exit_status, _interrupted_line
    click.echo(_interrupted_line(exc), err=True)
    return _exit_status(exc)


def warn(lines):
    """Print warnings about the data (``tilediff: warning: ...``, one line each). They are printed
    with --quiet too: --quiet silences progress and summaries, not what happened to an image."""
    for line in lines:
        click.echo(f"tilediff: warning: {' '.join(str(line).split())}", err=True)


def progress_printer(quiet):
    """(progress callback drawing one tqdm bar per stage, close function); (None, no-op) when quiet."""
    if quiet:
        return None, lambda: None
    from tqdm import tqdm
    state = {"bar": None, "stage": None}

    def progress(stage, done, total):
        """One bar, restarted for each stage; the sample stage counts tile-batches × steps."""
        bar = state["bar"]
        if bar is None or state["stage"] != stage:
            if bar is not None:
                bar.close()
            unit = "tile-step" if stage == "sample" else "tile"
            bar = state["bar"] = tqdm(total=total, desc=f"{stage:16}", unit=unit, leave=False, file=sys.stderr,
                                      dynamic_ncols=True)
            state["stage"] = stage
        bar.total = total
        bar.update(done - bar.n)

    def close():
        if state["bar"] is not None:
            state["bar"].close()
            state["bar"] = None
    return progress, close


def peak_memory_text(device):
    """'1.23 GB host[, 0.66 GB device]': this process's peak resident memory so far."""
    import resource
    import torch
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    text = f"{rss / 2**30:.2f} GB host"
    if device.type == "cuda":
        text += f", {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GB device"
    return text


def indent(text):
    return "\n".join("  " + line for line in text.splitlines())
