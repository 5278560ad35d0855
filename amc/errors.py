"""The one exception type for user-facing problems.

Every message is one line that says what is wrong and what to do instead; entry points print it and
exit with status 2 instead of showing a traceback.
"""


class AmcError(Exception):
    """A problem with the user's input (config, files, model) that the user can fix."""

    def __init__(self, message: str) -> None:
        if "\n" in message:
            message = " ".join(part.strip() for part in message.splitlines() if part.strip())
        super().__init__(message)
