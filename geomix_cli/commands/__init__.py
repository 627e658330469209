"""One module per command; each exposes `register(app)`.

Adding a command: create `geomix_cli/commands/<name>.py` with a `register(app)` function; it is
found automatically (modules whose names start with '_' are helpers, not commands). Commands are
registered in the order of ORDER, then alphabetically, which is the order `geomix --help` lists."""

import pkgutil
from importlib import import_module

ORDER = ["solve", "verify", "compare_alpha", "check", "plot_pareto", "plot", "simulate",
         "pairs", "sample", "regress", "bench", "cases"]


def register_all(app) -> None:
    names = [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]
    names.sort(key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))
    for name in names:
        import_module(f"{__name__}.{name}").register(app)
