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

from ..version import __version__

EXIT_OK, EXIT_GATE, EXIT_USAGE, EXIT_BUG, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def one_line(msg: str) -> str:
    """Control characters (from names inside a hostile model) escaped, so a message is one line."""
    return re.sub(r"[\x00-\x1f\x7f]", lambda m: f"\\x{ord(m.group()):02x}", str(msg).strip())


class DefaultGroup(click.Group):
    """`graphprune MODEL.onnx ...` runs the `prune` command; subcommands stay available.

    Every failure ends with one line on stderr: usage errors (exit 2), Ctrl-C (exit 130, atomic
    writes leave no partial output) and, should one happen, an internal error (exit 3, a bug:
    `--debug` shows its traceback). Click's own multi-line usage messages are shortened to one.
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
            click.echo("graphprune: interrupted; no partial output left", err=True)
            code = EXIT_INTERRUPTED
        except SystemExit as e:
            code = e.code
        if from_argv:  # the work is over: a late Ctrl-C must not turn success into a crash
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        sys.exit(code)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo("graphprune: interrupted; no partial output left", err=True)
            sys.exit(EXIT_INTERRUPTED)
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




def fail(msg: str, debug: bool, code: int = EXIT_USAGE) -> None:
    if debug:
        traceback.print_exc()
    click.echo(f"graphprune: error: {one_line(msg)}", err=True)
    sys.exit(code)


def setup_logging(debug: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING,
                        format="%(name)s: %(message)s")
    from ..runtime.session import set_debug

    set_debug(debug)
