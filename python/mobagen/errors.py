"""Exceptions of the mobagen package."""


class MobagenError(RuntimeError):
    """A libmobagen call failed: status is the mobagen_status code, status_name its name."""

    def __init__(self, status, status_name, message):
        super().__init__("%s (%s)" % (message, status_name))
        self.status = status
        self.status_name = status_name


class LibraryNotFoundError(ImportError):
    """libmobagen.so is missing, unloadable or of an incompatible version."""


class ArgumentError(ValueError):
    """An argument of a mobagen call has the wrong shape, dtype, device, layout or value."""


class LibraryArgumentError(MobagenError, ArgumentError):
    """The library refused an argument (MOBAGEN_E_ARG): both a MobagenError and a ValueError."""

