"""One exception type for mistakes a user can fix; the CLI prints it as one line."""


class UserError(ValueError):
    """Bad input or missing files: the message names the fix, no traceback needed."""
