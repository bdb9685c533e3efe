"""The exceptions of the handoff package: the Go SDK's sentinel errors."""

from __future__ import annotations


class HandoffError(Exception):
    """Base class of every error this package raises on purpose."""


class Skip(Exception):
    """Raised by a freeze hook: leave that connection in this process; the
    migration goes on without it (Go: ``ErrSkip``)."""


class Aborted(HandoffError):
    """An incoming handoff was called off before this process took over; the
    old process still serves (Go: ``ErrAborted``)."""


class Moved(HandoffError):
    """The operation came too late: this process's sockets have already been
    handed to another process (Go: ``ErrMoved``)."""


class NotSupported(HandoffError):
    """A socket cannot be moved (Go: ``ErrNotSupported``)."""


class StandbyTimeout(HandoffError):
    """A standby process waited in vain (Go: ``ErrStandbyTimeout``)."""
