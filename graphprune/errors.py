"""Error types. A `UserError` is the user's input or flags being wrong: the CLI prints it as one
line and exits with code 2, as it does for a `ValidationError`. Anything else escaping the
pipeline is a bug in graphprune: the CLI says so in one line and exits with code 3 (`--debug`
shows the traceback), so a bug is never mistaken for bad input or for a failed CI gate (1)."""


class UserError(Exception):
    """Bad input file, bad flags, or a model graphprune cannot read. Exit code 2."""


class ValidationError(Exception):
    """The rewritten model failed a check (checker, shape inference, ORT run, output signature).

    graphprune never writes a model that failed validation; this error carries what failed so the
    report can say it.
    """
