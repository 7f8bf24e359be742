"""The project's exception family: messages say what happened and what to do."""


class TokensmithError(Exception):
    """A failure a user can act on; the CLI prints its message as one line, the UI shows it with st.error."""


class EmbeddingFormatError(TokensmithError, ValueError):
    """A file is not a readable embedding (truncated, wrong layout, bad values)."""


class StoreError(TokensmithError):
    """A store operation was refused (bad name, name taken, not found)."""


class StrayNameError(StoreError):
    """A file in the store under a name the rules refuse (copied in by hand: 'EasyNegative (1)'). The message
    gives the CLI's ways out; `name` (the file's stem), `reason` (why the name is refused) and `valid_name`
    (what a rename would call it) let another door, the studio, word its own."""

    def __init__(self, message: str, *, name: str, reason: str, valid_name: str) -> None:
        super().__init__(message)
        self.name = name
        self.reason = reason
        self.valid_name = valid_name


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty), for one-line
    errors that wrap a library's multi-line one."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
