"""The one exception class for mistakes a user can fix."""


class OptbenchError(Exception):
    """Bad input or a missing prerequisite: CLIs print it as one line and exit 2."""


def one_line(exc: BaseException, limit: int = 500) -> str:
    """An exception's message on one line, at most `limit` characters (its type's name when it has none)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:limit]
