"""tracedmp's own exceptions: one base class, each message naming the bad value and the fix."""

from __future__ import annotations

__all__ = ["ConfigError", "TraceFileError", "TraceFormatError", "TracedmpError"]


class TracedmpError(Exception):
    """Base class of every error tracedmp raises itself."""


class ConfigError(TracedmpError, ValueError):
    """A configuration value (argument or environment variable) is not allowed."""


class TraceFileError(TracedmpError, OSError):
    """The trace file cannot be created or written."""


class TraceFormatError(TracedmpError, ValueError):
    """A trace file holds something that is not a tracedmp record."""
