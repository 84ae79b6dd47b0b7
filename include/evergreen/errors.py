"""Exceptions the library raises; the DAG factory maps data errors to non-retried task failures."""

from __future__ import annotations


class EvergreenError(Exception):
    """Base class of Evergreen's own errors."""


class DataQualityError(EvergreenError):
    """The data is wrong (failed expectations, unreadable file, too little data): retrying cannot help."""


class MissingDataError(DataQualityError):
    """A partition the run needs does not exist."""
