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


@app.callback()
def _root() -> None:
    """keytrail: a self-hosted AWS KMS-compatible key service with a trustworthy audit trail."""


def _register() -> None:
    from keytrail.cli import audit, demo, detect, metrics, report, serve

    serve.register(app)
    demo.register(app)
    detect.register(app)
    report.register(app)
    metrics.register(app)
    app.add_typer(audit.audit_app, name="audit")


def main() -> None:
    _register()
    app()
