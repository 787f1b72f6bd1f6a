"""How every steerfold command ends: one line and an exit code. 2 bad input (a SteerfoldError or a usage error),
1 a failed check, 130/143 interrupted (SIGINT/SIGTERM, after removing partial output), 141 a closed pipe, 70 an
unexpected error (its traceback goes to a crash log)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from steerfold.errors import SteerfoldError


class UserError(click.ClickException):
    """A SteerfoldError shown as one line, exit code 2."""

    exit_code = 2

    def show(self, file=None) -> None:  # noqa: D102 - click's interface
        click.echo(f"error: {self.message}", err=True)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that every output being written is removed, as on Ctrl-C."""


def _terminate(_signum, _frame) -> None:
    raise Terminated()


EXIT_BAD_INPUT, EXIT_CRASH, EXIT_INTERRUPT, EXIT_BROKEN_PIPE, EXIT_TERMINATED = 2, 70, 130, 141, 143


def crash_log(exc: BaseException) -> Path:
    """Write the traceback of an unexpected error to a file of its own; returns its path."""
    import tempfile
    import time
    import traceback

    from importlib.metadata import PackageNotFoundError, version

    try:
        __version__ = version("steerfold")
    except PackageNotFoundError:
        __version__ = "(not installed)"
    path = Path(tempfile.gettempdir()) / f"steerfold-crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    path.write_text(f"steerfold {__version__}\ncommand: {' '.join(sys.argv)}\n\n" + "".join(traceback.format_exception(exc)))
    return path


class SteerfoldGroup(click.Group):
    """Every way a command ends is one line and an exit code: 2 bad input (a SteerfoldError or a usage error), 1 a
    failed check, 130/143 interrupted (SIGINT/SIGTERM, after removing partial output), 70 an unexpected error
    (its traceback goes to a crash log)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SteerfoldError as exc:
            raise UserError(str(exc)) from None

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):  # noqa: D102
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except getattr(click.exceptions, "NoArgsIsHelpError", ()) as exc:  # a bare command: its help, as click prints it
            click.echo(exc.ctx.get_help())
            code = EXIT_BAD_INPUT
        except click.UsageError as exc:
            command = f"{exc.ctx.command_path} --help" if exc.ctx else "steerfold --help"
            click.echo(f"error: {exc.format_message()} (see {command})", err=True)
            code = EXIT_BAD_INPUT
        except click.ClickException as exc:
            exc.show()
            code = exc.exit_code
        except (click.Abort, KeyboardInterrupt) as exc:
            cause = exc if isinstance(exc, KeyboardInterrupt) else exc.__cause__ or exc.__context__
            click.echo("interrupted: nothing partial was left at the output", err=True)
            code = EXIT_TERMINATED if isinstance(cause, Terminated) else EXIT_INTERRUPT
        except SystemExit:
            raise
        except BrokenPipeError:  # the reader went away (e.g. | head): nothing more to say to it
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            code = EXIT_BROKEN_PIPE
        except Exception as exc:  # a bug: one line, the traceback in a file
            log = crash_log(exc)
            click.echo(f"error: steerfold failed unexpectedly ({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}); "
                       f"the traceback is in {log}: please report it with that file", err=True)
            code = EXIT_CRASH
        sys.exit(code or 0)


def run_command(group: click.Group) -> None:
    """Run the click application as the console entry point: SIGTERM cleans up as Ctrl-C does. An interrupted or
    crashed process ends with ``os._exit`` once its outputs are cleaned up and the streams flushed, so that no worker
    thread still running into interpreter teardown can abort it (SIGABRT instead of the exit code)."""
    import signal

    signal.signal(signal.SIGTERM, _terminate)
    try:
        group()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    for sig in (signal.SIGINT, signal.SIGTERM):  # the outcome is settled: a late signal changes nothing
        signal.signal(sig, signal.SIG_IGN)
    if code in (0, 1, EXIT_BAD_INPUT):
        sys.exit(code)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
