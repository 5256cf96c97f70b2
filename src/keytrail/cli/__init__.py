"""The `keytrail` command: the composition root that wires every piece together.

Each command group lives in its own module of this package; this module only assembles them.
"""

from __future__ import annotations

import typer

__all__ = ["app", "main"]

app = typer.Typer(
    name="keytrail",
    help="A self-hosted key service speaking the AWS KMS API, with a trustworthy audit trail.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register() -> None:
    from keytrail.cli import serve

    serve.register(app)


def main() -> None:
    _register()
    app()
