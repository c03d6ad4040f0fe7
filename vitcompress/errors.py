"""The one exception type users see: a problem with their input, stated with its fix."""


class VitCompressError(Exception):
    """Bad input or an impossible request.

    The message is a single line that names the problem and how to fix it; the CLI prints it
    as ``error: <message>`` and exits with code 2.
    """

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
