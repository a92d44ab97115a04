"""The `graphprune` command line (entry point `graphprune.cli.main:main`)."""
from .app import main
from . import batch, prune, tools  # noqa: F401,E402  (register the commands)

__all__ = ["main"]

if __name__ == "__main__":  # pragma: no cover
    main()
