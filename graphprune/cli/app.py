"""The command group: `graphprune MODEL ...` prunes; `analyze`, `bench` and `sweep` are
subcommands. Errors on bad input are one line on stderr and exit code 2; `--debug` shows the
traceback.
"""
from __future__ import annotations

import logging
import re
import signal
import sys
import traceback

import click

from ..ir.writer import Terminated, install_signal_handlers
from ..version import __version__

EXIT_OK, EXIT_GATE, EXIT_USAGE, EXIT_BUG, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_PIPE = 128 + 13  # stdout's reader went away (what a shell reports for SIGPIPE)
INTERRUPTED = "graphprune: interrupted; no partial output left"


def one_line(msg: str) -> str:
    """Control characters (from names inside a hostile model) escaped, so a message is one line."""
    return re.sub(r"[\x00-\x1f\x7f]", lambda m: f"\\x{ord(m.group()):02x}", str(msg).strip())


class DefaultGroup(click.Group):
    """`graphprune MODEL.onnx ...` runs the `prune` command; subcommands stay available.

    Every failure ends with one line on stderr: usage errors (exit 2), Ctrl-C (exit 130) and
    SIGTERM/SIGHUP (exit 143/129; the writer leaves no partial output or temporary file) and,
    should one happen, an internal error (exit 3, a bug: `--debug` shows its traceback).
    Click's own multi-line usage messages are shortened to one.
    """

    debug = False

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = ["prune"] + list(args)
        return super().parse_args(ctx, args)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        from_argv = args is None
        args = list(sys.argv[1:] if args is None else args)
        self.debug = "--debug" in args
        restore = _signal_handlers()
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) else EXIT_OK
        except click.exceptions.NoArgsIsHelpError as e:
            e.show()
            code = e.exit_code
        except click.ClickException as e:
            msg = one_line(" ".join(e.format_message().split()))
            click.echo(f"graphprune: error: {msg}", err=True)
            code = e.exit_code
        except (click.exceptions.Abort, KeyboardInterrupt):
            click.echo(INTERRUPTED, err=True)
            code = EXIT_INTERRUPTED
        except Terminated as e:
            click.echo(_terminated(e), err=True)
            code = e.exit_code
        except SystemExit as e:
            code = e.code
        if from_argv:  # the work is over: a late signal must not turn success into a crash
            for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
                if s is not None:
                    signal.signal(s, signal.SIG_IGN)
        else:
            restore()
        sys.exit(code)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo(INTERRUPTED, err=True)
            sys.exit(EXIT_INTERRUPTED)
        except Terminated as e:
            click.echo(_terminated(e), err=True)
            sys.exit(e.exit_code)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except MemoryError:
            if self.debug:
                traceback.print_exc()
            click.echo("graphprune: error: out of memory", err=True)
            sys.exit(EXIT_USAGE)
        except Exception as e:
            if self.debug:
                traceback.print_exc()
            line = one_line((str(e).strip().splitlines() or [""])[0][:300])
            click.echo(f"graphprune: internal error: {type(e).__name__}: {line} (a bug in "
                       "graphprune; --debug shows the traceback)", err=True)
            sys.exit(EXIT_BUG)


@click.group(cls=DefaultGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="graphprune")
def main():
    """Structured pruning for ONNX models.

    \b
    graphprune MODEL.onnx --ratio 0.3 [-o OUT.onnx] [--report report.json]
    graphprune analyze MODEL.onnx [--json]
    graphprune bench MODEL.onnx [OTHER.onnx] [--threads N] [--repeats R]
    graphprune sweep MODEL.onnx --ratios 0.1,0.2,0.3,0.5 [--max-drop X]
    """




def _signal_handlers():
    """SIGTERM and SIGHUP become `Terminated` (so outputs being staged are removed), in the
    main thread only; returns what restores the previous handlers."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    return install_signal_handlers()


def _terminated(e: Terminated) -> str:
    return f"graphprune: {e}; no partial output left"


def emit(text: str) -> None:
    """Print a command's result on stdout. A reader that went away (`| head`) ends the command
    quietly with 141, as SIGPIPE would; any other failure to write (a full disk behind a
    redirection) is one line on stderr and exit 2. Files the command wrote stay written."""
    try:
        click.echo(text)
        sys.stdout.flush()
    except BrokenPipeError:
        _drop_stdout()
        sys.exit(EXIT_PIPE)
    except OSError as e:
        _drop_stdout()
        click.echo(f"graphprune: error: cannot write to standard output: {e.strerror or e}",
                   err=True)
        sys.exit(EXIT_USAGE)


def _drop_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail again."""
    import os

    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())
        os.close(fd)
    except (OSError, ValueError, AttributeError):  # not a real file (tests): nothing to flush
        pass


def fail(msg: str, debug: bool, code: int = EXIT_USAGE) -> None:
    if debug:
        traceback.print_exc()
    click.echo(f"graphprune: error: {one_line(msg)}", err=True)
    sys.exit(code)


def setup_logging(debug: bool) -> None:
    """Python logging at WARNING (DEBUG with --debug); ONNX Runtime's own logging off (on at
    ERROR with --debug) in this process and the ones it starts; Python warnings (from
    numpy, matplotlib, ...) off unless --debug, so stderr carries graphprune's lines only."""
    import warnings

    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING,
                        format="%(name)s: %(message)s")
    if not debug:
        warnings.simplefilter("ignore")
        logging.getLogger("matplotlib").setLevel(logging.ERROR)
    from ..runtime.session import set_debug

    set_debug(debug)
