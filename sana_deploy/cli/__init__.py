"""``sana-deploy``: the click group and every command, a thin layer over the library functions.

Each command module (``cli/<area>.py``) maps options onto one library call; this module creates the group, adds
the commands, and is the one place errors are printed. Every error is one ``error: ...`` message without a
traceback: a :class:`SanaDeployError` (its message says what to do), an ``OSError`` (the path and what to check),
and any other exception (its type and first line). ``sana-deploy --debug ...`` or ``SANA_DEPLOY_DEBUG=1`` prints
the traceback first. No library module imports this package.
"""

from __future__ import annotations

import errno
import os
import sys
import traceback
from typing import NoReturn

import click

from sana_deploy.cli import bench, engines, export, generate, quantize, serve
from sana_deploy.errors import SanaDeployError

DEBUG_ENV = "SANA_DEPLOY_DEBUG"
USER_ERROR_EXIT = 2  # the input can be fixed (as click's usage errors)
INTERNAL_ERROR_EXIT = 1  # an exception sana-deploy did not expect
_OS_ADVICE = {
    errno.EACCES: "check its permissions, or choose a path you can write",
    errno.EPERM: "check its permissions, or choose a path you can write",
    errno.EROFS: "the filesystem is read-only; choose a path on a writable one",
    errno.EISDIR: "it is a folder where a file is needed; give a file path",
    errno.ENOTDIR: "a part of it is a file where a folder is needed; check the path",
    errno.ENOENT: "check that the path exists",
    errno.ENOSPC: "free some space on that disk, or choose another path",
    errno.EDQUOT: "free some space on that disk, or choose another path",
}


def debug_requested(ctx: click.Context | None = None) -> bool:
    """``--debug`` on the group, or ``SANA_DEPLOY_DEBUG`` set to anything but empty or ``0``."""
    if ctx is not None and ctx.find_root().params.get("debug"):
        return True
    return os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")


def _first_line(text: str, limit: int = 300) -> str:
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def describe_os_error(exc: OSError) -> str:
    """One line naming the path and what to check: ``Permission denied: /x (check its permissions, ...)``."""
    what = exc.strerror or _first_line(str(exc)) or type(exc).__name__
    paths = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p is not None)
    advice = _OS_ADVICE.get(exc.errno or 0, "check the path and try again")
    return f"{what}: {paths} ({advice})." if paths else f"{what} ({advice})."


def error_message(exc: BaseException) -> tuple[str, int]:
    """The ``error: ...`` text and exit status for an exception a command raised."""
    if isinstance(exc, SanaDeployError):
        return str(exc), USER_ERROR_EXIT
    if isinstance(exc, OSError):
        return describe_os_error(exc), USER_ERROR_EXIT
    detail = _first_line(str(exc))
    return (
        f"unexpected {type(exc).__name__}{': ' + detail if detail else ''}. This is an input sana-deploy does not "
        f"check yet, or a bug: run `sana-deploy --debug ...` (or set {DEBUG_ENV}=1) for the traceback and report it."
    ), INTERNAL_ERROR_EXIT


class SanaGroup(click.Group):
    """Turns every exception a command raises into one ``error: ...`` line (see the module docstring); click's
    own usage errors and exits pass through as click prints them."""

    def invoke(self, ctx: click.Context):  # noqa: ANN201
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except OSError as exc:
            if exc.errno == errno.EPIPE:  # output piped into e.g. `head`: click's own quiet exit
                raise
            self._fail(ctx, exc)
        except Exception as exc:
            self._fail(ctx, exc)

    @staticmethod
    def _fail(ctx: click.Context, exc: Exception) -> NoReturn:
        message, status = error_message(exc)
        if debug_requested(ctx):
            traceback.print_exception(exc, file=sys.stderr)
        click.secho(f"error: {message}", fg="red", err=True)
        sys.exit(status)


@click.group(cls=SanaGroup)
@click.version_option(package_name="sana-deploy")
@click.option(
    "--debug",
    is_flag=True,
    help=f"Print the full traceback of an error before its message (or set {DEBUG_ENV}=1).",
)
def main(debug: bool) -> None:
    """Ahead-of-time compiled deployment toolkit for NVIDIA Sana."""


for _command in (
    export.models,
    export.export,
    engines.build,
    quantize.quantize,
    engines.engines,
    generate.generate,
    bench.bench,
    serve.serve,
    serve.export_triton,
):
    main.add_command(_command)

__all__ = ["DEBUG_ENV", "debug_requested", "describe_os_error", "error_message", "main"]
