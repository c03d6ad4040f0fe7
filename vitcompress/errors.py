"""The one exception type users see: a problem with their input, stated with its fix."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping


class VitCompressError(Exception):
    """Bad input or an impossible request.

    The message is a single line that names the problem and how to fix it, in the words of the
    Python API: parameters appear as ``name`` or ``name=value`` (``pass force=True``). ``params``
    lists the parameter names the message mentions, so that the command line can show them as its
    flags (``pass --force``, see ``with_flags``); it prints the result as ``error: <message>`` and
    exits with code 2.
    """

    exit_code = 2

    def __init__(self, message: str, *, params: Iterable[str] = ()):
        super().__init__(" ".join(str(message).split()))
        self.params = tuple(params)

    def with_flags(self, flags: Mapping[str, str]) -> str:
        """The message with each named parameter written as its command-line flag.

        ``flags`` maps parameter names to flags (``{"force": "--force"}``); ``name=True`` becomes
        the flag, ``name=value`` becomes ``flag value``, a bare ``name`` becomes the flag. Parameters
        without a flag stay as they are.
        """
        msg = str(self)
        for name in self.params:
            flag = flags.get(name)
            if flag is None:
                continue
            msg = re.sub(rf"(?<![\w./'-]){re.escape(name)}=True\b", flag, msg)
            msg = re.sub(rf"(?<![\w./'-]){re.escape(name)}=", f"{flag} ", msg)
            msg = re.sub(rf"(?<![\w./'-]){re.escape(name)}(?![\w=])", flag, msg)
        return msg
