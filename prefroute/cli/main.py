"""The ``prefroute`` command: wires the commands; known errors become one line."""

from __future__ import annotations

import os
import re
import sys
import traceback

import typer

from prefroute.cli.augment import app as augment_app
from prefroute.cli.benchmark import benchmark
from prefroute.cli.calibrate import calibrate
from prefroute.cli.common import setup_logging
from prefroute.cli.compare import compare
from prefroute.cli.evaluate import evaluate
from prefroute.cli.import_routellm import import_routellm
from prefroute.cli.info import info
from prefroute.cli.multi import app as multi_app
from prefroute.cli.score import score
from prefroute.cli.serve import serve
from prefroute.cli.train import train
from prefroute.cli.update import update
from prefroute.errors import PrefrouteError

app = typer.Typer(
    name="prefroute",
    help="Learn to route prompts between LLMs from preference data.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # plain click help: rich's renderer alone takes ~0.5 s to import
)


@app.callback()
def _options(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="log what each step does"),
    debug: bool = typer.Option(False, "--debug", help="show tracebacks for known errors"),
) -> None:
    setup_logging(verbose)
    if debug:
        os.environ["PREFROUTE_DEBUG"] = "1"


app.command()(train)
app.command()(score)
app.command()(calibrate)
app.command(name="eval")(evaluate)
app.command()(benchmark)
app.command()(serve)
app.command(name="import-routellm")(import_routellm)
app.command()(update)
app.command()(compare)
app.command()(info)
app.add_typer(multi_app, name="multi", help="Route among N LLMs: train and evaluate.")
app.add_typer(augment_app, name="augment", help="Build battles: golden labels or an LLM judge.")


MAX_MESSAGE_CHARS = 2000
# API keys and bearer tokens that an upstream error may echo back
_SECRETS = re.compile(r"(Bearer\s+|\b(?:sk|pk|rk)-)[A-Za-z0-9_\-.]{6,}", re.IGNORECASE)
# a credential header quoted back (``Authorization: Bearer x``, ``'api-key': 'x'``): any length
_CREDENTIAL_HEADERS = re.compile(
    r"""(?i)\b((?:proxy-)?authorization|x-api-key|api-key)(["']?\s*[:=]\s*["']?)"""
    r"""((?:bearer|basic|token)\s+)?[^\s,;'"}]+"""
)


def redact_secrets(text: str) -> str:
    """``text`` with credential headers, bearer tokens, API keys, ``key=`` parameters and
    URL credentials masked (what an upstream error or a traceback may quote)."""
    from prefroute.serve.errors import redact

    text = _CREDENTIAL_HEADERS.sub(r"\g<1>\g<2>\g<3>[redacted]", text)
    text = _SECRETS.sub(lambda m: m.group(1) + "[redacted]", text)
    return redact(text)


def _one_line(error: BaseException) -> str:
    """The message on one line, secrets redacted first, then cut to a readable length."""
    text = " ".join(redact_secrets(str(error)).split()) or type(error).__name__
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 3] + "..."


def _print_traceback(error: BaseException) -> None:
    """--debug: the whole traceback, formatted to text and redacted before it is printed."""
    sys.stderr.write(redact_secrets("".join(traceback.format_exception(error))))
    sys.stderr.flush()


def main() -> None:
    """Run the CLI. Any error prints one line and a hint (a traceback only with --debug, its
    secrets redacted like the line's): exit code 2 for known errors (bad input, refused
    output), 1 for anything unexpected, 130 when interrupted."""
    try:
        app()
    except PrefrouteError as e:
        if os.environ.get("PREFROUTE_DEBUG"):
            _print_traceback(e)
            sys.exit(2)
        typer.secho(f"error: {_one_line(e)}", err=True, fg=typer.colors.RED)
        typer.echo("hint: run with --debug for a traceback, --help for usage", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted; outputs are written atomically, so nothing half-written "
                   "was left behind", err=True)
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - the last line of defence of a command-line tool
        if os.environ.get("PREFROUTE_DEBUG"):
            _print_traceback(e)
            sys.exit(1)
        typer.secho(f"error: {type(e).__name__}: {_one_line(e)}", err=True, fg=typer.colors.RED)
        typer.echo(
            "hint: this input or situation is not handled cleanly; run with --debug for a "
            "traceback and report it",
            err=True,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
