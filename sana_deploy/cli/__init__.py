"""``sana-deploy``: the click group and every command, a thin layer over the library functions.

Each command module (``cli/<area>.py``) maps options onto one library call; this module creates the group, adds
the commands, and is the one place user errors are printed (no traceback: the messages say what to do). No library
module imports this package.
"""

from __future__ import annotations

import sys

import click

from sana_deploy.cli import bench, engines, export, generate, serve
from sana_deploy.errors import SanaDeployError


class SanaGroup(click.Group):
    """Prints :class:`SanaDeployError` messages without a traceback (they already say what to do)."""

    def invoke(self, ctx: click.Context):  # noqa: ANN201
        try:
            return super().invoke(ctx)
        except SanaDeployError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(2)


@click.group(cls=SanaGroup)
@click.version_option(package_name="sana-deploy")
def main() -> None:
    """Ahead-of-time compiled deployment toolkit for NVIDIA Sana."""


for _command in (
    export.models,
    export.export,
    engines.build,
    engines.engines,
    generate.generate,
    bench.bench,
    serve.serve,
    serve.export_triton,
):
    main.add_command(_command)

__all__ = ["main"]
