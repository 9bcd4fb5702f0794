"""The one error type the command line turns into a one-line message instead of a traceback."""


class LlmqError(Exception):
    """Bad input or a missing resource; the message says how to fix it."""
