"""The one exception type that the command line turns into a single clear line and exit code 2."""


class DpbenchError(Exception):
    """A user-facing error: bad input, unsupported model or layer, missing data."""
