"""The one exception type that the CLI turns into a clean message.

Library code raises `PixelNetError` for anything a user can fix (bad params,
missing or corrupt files, unwritable directories).  The message must name the
file or parameter and say what to do; the CLI prints it without a traceback
and exits non-zero (`--debug` shows the traceback).
"""


class PixelNetError(Exception):
    """A user-fixable problem, with a message that names the cause and the fix."""


class ConfigError(PixelNetError):
    """A parameter of the wrong type, out of range, or unknown."""
