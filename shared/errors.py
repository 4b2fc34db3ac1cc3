"""The one exception class for mistakes a user can fix."""


class OptbenchError(Exception):
    """Bad input or a missing prerequisite: CLIs print it as one line and exit 2."""


def one_line(said: BaseException | str, limit: int = 500) -> str:
    """An exception's message (or a text) on one line, at most `limit` characters; an exception with no message
    gives its type's name."""
    text = " ".join(str(said).split()) or type(said).__name__
    return text[:limit]
