"""Errors a user can act on. The CLI prints their message alone, without a traceback."""


class FeatxError(Exception):
    """Base class: the message says what is wrong and what to do."""


class WeightsError(FeatxError):
    """Weights cannot be found, downloaded or read, or do not fit the net."""


class ImageError(FeatxError):
    """An image cannot be read; the message names the image and the reason.

    transient: the failure may pass without the file changing (not found, no permission, an
    I/O error), so a later run tries the image again; a decode failure of the same bytes is
    not transient."""

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient

    def __reduce__(self):  # keep `transient` across processes (pickle passes args only)
        return type(self), (str(self), self.transient)


class CacheError(FeatxError):
    """A descriptor cache cannot be used as asked (locked, mismatched, incomplete)."""


class DatasetError(FeatxError):
    """A dataset is missing or malformed; the message names the file (and line)."""


class ConfigError(FeatxError, ValueError):
    """An argument has a value featx cannot use (also a ValueError for Python callers)."""


class EngineError(FeatxError):
    """A distributed run failed on its workers; rows already committed are kept."""


class OutputError(FeatxError):
    """A file featx writes could not be written (a full disk, a read-only folder); what was
    there before is kept, and the message says so."""
