"""The one exception type for user-facing input errors.

Messages name the case, file and value at fault, so that the command line can print them as they are, without a
traceback.
"""


class MissingModError(ValueError):
    """Bad input from a user: an unknown modality name, a malformed dataset, an unreadable file, ..."""
