"""The ``tilediff`` command line (click): one module per command group.

restore.py  ``tilediff restore`` (images and folders)     models.py  ``tasks``, ``info``, ``convert``
demo.py     ``tilediff demo`` (the bundled example)        train.py   ``train``, ``eval``
bench.py    ``tilediff bench`` (the benchmark suite)       common.py  errors, progress bar, signals
app.py      the click group holding them

This module is the console entry point (``tilediff = tilediff.cli:main``) and stays light: it tunes
the host allocator (before torch loads), turns SIGTERM into the KeyboardInterrupt that SIGINT
raises, and only then imports the commands (click, numpy, torch: a second or two), inside the same
handler that ends an interrupted command. So Ctrl-C or SIGTERM at any moment, also while torch is
still importing, ends with one line (``tilediff: interrupted``) and exit status 130 (SIGINT) or 143
(SIGTERM), after the atomic writers have removed their temporary files.
"""
import sys

try:   # an interrupt this early (Python still starting) also ends with one line, not a traceback
    import signal

    from ..engine import host_memory

    host_memory.configure()   # a program, not a library: tune the allocator before torch loads (host_memory)
except KeyboardInterrupt:
    sys.stderr.write("tilediff: interrupted\n")
    raise SystemExit(130) from None


class Interrupted(KeyboardInterrupt):
    """A KeyboardInterrupt raised by a signal handler; ``signum`` is the signal (SIGINT, SIGTERM)."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


def install_signal_handlers():
    """SIGINT and SIGTERM raise ``Interrupted`` (a KeyboardInterrupt) in the main thread, so every
    ``finally`` and atomic writer cleans up; a signal that is ignored (nohup, a shell's background
    job) stays ignored."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            if signal.getsignal(signum) != signal.SIG_IGN:
                signal.signal(signum, _raise_interrupted)
        except (ValueError, OSError):   # not the main thread, or a platform without the signal
            pass


def _exit_status(exc):
    return 128 + int(getattr(exc, "signum", signal.SIGINT))


def _interrupted_line(exc):
    if getattr(exc, "signum", signal.SIGINT) == signal.SIGTERM:
        return "tilediff: interrupted (SIGTERM)"
    return "tilediff: interrupted"


def _group():
    from .app import main as group
    return group


class _Entry:
    """``tilediff.cli.main``: calling it runs the command line (the console script); every other
    attribute is the click group's (``CliRunner().invoke(main, ...)`` works as on the group)."""

    def __call__(self, *args, **kwargs):
        install_signal_handlers()
        try:
            group = _group()
            return group(*args, **kwargs)
        except KeyboardInterrupt as exc:
            try:
                sys.stderr.write(_interrupted_line(exc) + "\n")
                sys.stderr.flush()
            except (OSError, ValueError, KeyboardInterrupt):
                pass
            sys.exit(_exit_status(exc))

    def __getattr__(self, name):
        return getattr(_group(), name)

    def __repr__(self):
        return "<tilediff command line (tilediff.cli.main)>"


main = _Entry()

# cli.CliError / cli.fail, as before, without importing click here
_LAZY = {"CliError": "common", "fail": "common"}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    main()
