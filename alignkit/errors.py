"""User-facing errors: one sentence that names the place and says what to do."""


class AlignkitError(Exception):
    """An error caused by the user's input (data, config, paths), shown without a traceback."""
