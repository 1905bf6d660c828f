"""The one exception type of the data layer."""


class DataError(ValueError):
    """A data file, row or option that cannot be used.

    The message names the file, the row or line, the field and what to change. It subclasses
    ``ValueError`` so callers that already catch bad values keep working.
    """
