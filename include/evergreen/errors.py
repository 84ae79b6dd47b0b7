"""Exceptions the library raises; the DAG factory maps data errors to non-retried task failures."""

from __future__ import annotations


class EvergreenError(Exception):
    """Base class of Evergreen's own errors."""


class DataQualityError(EvergreenError):
    """The data is wrong (failed expectations, unreadable file, too little data): retrying cannot help."""


class MissingDataError(DataQualityError):
    """A partition the run needs does not exist."""


class NoChampionError(EvergreenError, LookupError):
    """The registered model has no ``@champion`` (or its run lacks a reference profile): nothing to monitor."""


class RegistryError(EvergreenError):
    """A registry operation cannot be carried out as asked (e.g. nothing to roll back to)."""


class IntegrityError(DataQualityError, ValueError):
    """Stored data does not match the manifest that published it (tampered, republished, truncated)."""


class UnpublishedPartitionError(DataQualityError, FileNotFoundError):
    """A partition was asked for that has no manifest (never published, or withdrawn)."""
