"""Error types. A `UserError` is the user's input or flags being wrong: the CLI prints it as one
line and exits with code 2. Anything else escaping the pipeline is a bug in graphprune."""


class UserError(Exception):
    """Bad input file, bad flags, or a model graphprune cannot read. Exit code 2."""


class ValidationError(Exception):
    """The rewritten model failed a check (checker, shape inference, ORT run, output signature).

    graphprune never writes a model that failed validation; this error carries what failed so the
    report can say it.
    """
