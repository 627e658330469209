"""`geomix verify SUITE`: placeholder until the verify suite lands (issue 3)."""

from __future__ import annotations

from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    from geomix_cli.cli import guarded

    @app.command("verify")
    @guarded
    def verify(suite: Optional[str] = typer.Argument(None)) -> None:
        """Check every claim of the derivation (not implemented yet)."""
        from geomix_cli.errors import UnavailableError

        raise UnavailableError("the verify suites are not there yet (planned: verify_alpha_theory);"
                               " use `geomix solve` meanwhile")
