"""One module per command; each exposes `register(app)`.

Adding a command: create the module, define `register`, and add its name to COMMANDS."""

from importlib import import_module

COMMANDS = ["solve", "cases", "verify"]


def register_all(app) -> None:
    for name in COMMANDS:
        import_module(f"geomix_cli.commands.{name}").register(app)
