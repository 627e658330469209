"""`geomix cases`: list the generators, export what one produces."""

from __future__ import annotations

import typer

from geomix_cli.commands import _shared


def register(app: typer.Typer) -> None:
    from geomix_cli.cli import guarded

    cases_app = typer.Typer(help="Generators and the golden-case library.", no_args_is_help=True)
    app.add_typer(cases_app, name="cases")

    @cases_app.command("export")
    @guarded
    def export(spec: str = typer.Argument(..., help="Generator spec gen:NAME:key=value,..."),
               out: str = typer.Argument(..., help="Output .npz file. " + _shared.FILE_HELP),
               force: bool = _shared.ForceOption) -> None:
        """Write what a generator produces to an .npz file that every command reads."""
        from geomix_cli.cases import generate, parse_generator_spec
        from geomix_cli.errors import InputError
        from geomix_cli.io import write_pairs_npz

        if not spec.startswith("gen:"):
            raise InputError("expected a generator spec gen:NAME:key=value,...", file=spec)
        if not out.lower().endswith(".npz"):
            raise InputError("output must end in .npz", file=out)
        parse_generator_spec(spec)  # a bad spec is named before the output is looked at
        _shared.output_file(out, force=force, option="OUT")
        raw = generate(spec)
        write_pairs_npz(out, theta=raw.theta, target=raw.target, kind=raw.kind)
        typer.echo(out)

    @cases_app.command("generators")
    def generators() -> None:
        """List the generators with their parameters and defaults."""
        from geomix_cli.cases import COMMON_DEFAULTS, GENERATORS

        for gen in GENERATORS.values():
            params = ", ".join(f"{k}={v}" for k, v in {**gen.defaults, **COMMON_DEFAULTS}.items())
            typer.echo(f"gen:{gen.name}:{params}\n    {gen.description}")
