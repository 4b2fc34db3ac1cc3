"""The one exception class for mistakes a user can fix."""


class OptbenchError(Exception):
    """Bad input or a missing prerequisite: CLIs print it as one line and exit 2."""
