"""The `pixelnet` command line: `pixelnet STAGE ...` runs one pipeline stage's command; `pixelnet serve` the page.

The commands are the stage modules' own (pixelnet.stages.NAME.command), found by listing the package, and
`pixelnet NAME` imports only module NAME: the process runs what `python -m pixelnet.stages.NAME` (dvc.yaml's
form) runs.  `pixelnet --help` imports them all to list them.  Errors: see pixelnet.command.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from typing import Annotated

import typer

import pixelnet.stages
from pixelnet.command import app_for, run_app

HELP = "PixelNet: PixelCNN-style image generation. Commands are the pipeline's stages (dvc.yaml runs them in order)."


# Commands that are not pipeline stages: name -> module with `command`.
OTHER_COMMANDS = {"serve": "pixelnet.serve.main", "preset": "pixelnet.preset"}


def command_modules() -> dict[str, str]:
    stages = {m.name: f"pixelnet.stages.{m.name}" for m in pkgutil.iter_modules(pixelnet.stages.__path__)}
    return dict(sorted((stages | OTHER_COMMANDS).items()))


def full_app() -> typer.Typer:
    """Every command, for `pixelnet --help` (imports every stage module)."""
    app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, help=HELP)

    @app.callback()
    def root(debug: Annotated[bool, typer.Option("--debug", help="show tracebacks for errors")] = False) -> None:
        """(--debug is read by pixelnet.command.run_app.)"""

    for name, module in command_modules().items():
        app.command(name)(importlib.import_module(module).command)
    return app


def main() -> None:
    """Entry point: `pixelnet NAME ARGS` runs stage NAME's command alone; anything else goes to the full app."""
    args = sys.argv[1:]
    words = [a for a in args if a != "--debug"]
    modules = command_modules()
    if words and words[0] in modules:
        rest = list(args)
        rest.remove(words[0])
        run_app(app_for(importlib.import_module(modules[words[0]]).command), prog=f"pixelnet {words[0]}", args=rest)
        return
    run_app(full_app(), prog="pixelnet", args=args)
