"""One exception family for every domain error.

Contract: library code raises EniplaneError (or a subclass) with a one-line message naming the object
and, where there is one, the kernel's error; the CLI turns it into that line on stderr and the
exit code below, in one place. Nothing else in the code base prints errors or calls sys.exit.
"""

from __future__ import annotations

import os


class EniplaneError(Exception):
    """An operational error: exit code 1."""

    exit_code = 1

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(EniplaneError):
    """The command line itself is wrong: exit code 2."""

    exit_code = 2


class NotFound(EniplaneError):
    pass


class AlreadyExists(EniplaneError):
    pass


class InvalidInput(EniplaneError):
    pass


class FileError(EniplaneError):
    """A file named on the command line cannot be read or written (message carries strerror)."""


class BpfError(EniplaneError):
    """A bpf(2) call failed; errno is kept so callers can tell ENOENT from the rest."""

    def __init__(self, message: str, what: str = "", errno: int | None = None):
        self.what = what
        self.errno = errno
        super().__init__(f"{what}: {message}" if what else message)


class LoadError(EniplaneError):
    """Compiling, verifying or attaching the datapath failed."""


class NetlinkError(EniplaneError):
    def __init__(self, message: str, errno: int | None = None):
        self.errno = errno
        if errno is not None:
            message = f"{message}: {os.strerror(errno)}"
        super().__init__(message)
