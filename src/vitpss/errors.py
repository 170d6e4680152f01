"""The one exception type for mistakes a user can fix (bad arguments, configs, data)."""


class UsageError(Exception):
    """A user-fixable problem; the CLI prints its message on one line and exits with status 2."""
