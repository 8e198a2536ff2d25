"""``edge-model``: one console script, one module per subcommand, loaded on demand.

Each subcommand lives in its own module exposing a click command called
``command``; the group imports a module only when its subcommand runs, so
``edge-model --help`` works without the build extra installed.
"""

from __future__ import annotations

import importlib
import logging

import click

SUBCOMMANDS = {
    "crops": "edge_model.crops",
    "convert": "edge_model.convert",
    "eval": "edge_model.evaluate",
    "tune": "edge_model.tune",
    "bench": "edge_model.bench",
    "macs": "edge_model.macs",
    "check-arm": "edge_model.check_arm",
    "compare-liveness": "edge_model.liveness_compare",
    "eval-liveness": "edge_model.liveness_eval",
    "train-student": "edge_model.train_student",
    "train-consistent": "edge_model.train_consistent",
    "train-edgenext": "edge_model.train_edgenext",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx, name):
        module_name = SUBCOMMANDS.get(name)
        if module_name is None:
            return None
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("edge_model"):
                return None
            raise click.ClickException(
                f"'{name}' needs {exc.name}, which is in the build extra: pip install -e './tools[build]'"
            ) from exc
        return module.command


@click.group(cls=LazyGroup)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(verbose: bool) -> None:
    """Build, check and tune model bundles for the door appliance."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


if __name__ == "__main__":
    main()
