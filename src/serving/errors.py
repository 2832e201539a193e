"""The one error hierarchy of `serving`.

Every error declares an :class:`ErrorKind`; the wire codes for each kind live in exactly
one place, ``serving.protocol.status``. Nothing here knows about HTTP or gRPC.

    ServingError (INTERNAL)
    ├── InvalidInputError (INVALID_INPUT)
    │   └── PayloadTooLargeError (TOO_LARGE)
    ├── ModelNotFoundError (NOT_FOUND)
    ├── ModelNotReadyError (UNAVAILABLE)
    ├── QueueFullError (OVERLOADED)
    ├── DeadlineExceededError (DEADLINE_EXCEEDED)
    ├── UnsupportedError (UNIMPLEMENTED)  a feature or extension this server does not implement
    │   └── UnsupportedDatatypeError     a datatype it does not implement (BF16)
    ├── UnauthenticatedError (UNAUTHENTICATED)     no API key, or an unknown one
    ├── PermissionDeniedError (PERMISSION_DENIED)  a key used outside what it may do
    ├── ConflictError (CONFLICT)    an operator change the current state forbids
    │   └── GateError (CONFLICT)    a promote refused by a release gate
    ├── ModelExecutionError (INTERNAL)
    │   └── ModelOutputError (INTERNAL, message shown)  outputs that break the declared contract
    ├── StartupError (INTERNAL)     the replicas could not start (reported by the CLI, not a request)
    └── ConfigError (INVALID_INPUT)   a model.yaml or settings file that does not validate
        └── FileReadError (INVALID_INPUT)  a file that exists but could not be read: may pass
"""

from __future__ import annotations

import enum
from typing import ClassVar


class ErrorKind(enum.Enum):
    """What went wrong, independent of any wire protocol."""

    INVALID_INPUT = "invalid_input"
    TOO_LARGE = "too_large"
    NOT_FOUND = "not_found"
    UNAVAILABLE = "unavailable"
    OVERLOADED = "overloaded"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    UNIMPLEMENTED = "unimplemented"
    UNAUTHENTICATED = "unauthenticated"
    PERMISSION_DENIED = "permission_denied"
    CONFLICT = "conflict"
    INTERNAL = "internal"


MAX_MESSAGE = 1000
"""The longest error message sent to a client (and logged): longer ones keep both ends."""


class ServingError(Exception):
    """Base class of every error the server reports to a client."""

    kind: ClassVar[ErrorKind] = ErrorKind.INTERNAL
    shown: ClassVar[bool] = False
    """An INTERNAL error's message is shown to the client only when set (it names files and
    tensors, never data or a traceback); other kinds always show theirs."""

    def __init__(self, message: str) -> None:
        if len(message) > MAX_MESSAGE:  # messages quote what clients sent: never echo megabytes back
            cut = len(message) - MAX_MESSAGE
            message = f"{message[: MAX_MESSAGE // 2]}... ({cut:,} characters cut) ...{message[-MAX_MESSAGE // 2 :]}"
        super().__init__(message)
        self.message = message


class InvalidInputError(ServingError):
    """The request is malformed or does not match the model's inputs."""

    kind = ErrorKind.INVALID_INPUT


class InvalidInput(InvalidInputError):
    """Raised by a user's ``model.py`` (public as ``serving.InvalidInput``): the request is
    answered 400 / INVALID_ARGUMENT with this message."""


class PayloadTooLargeError(InvalidInputError):
    """The request body is larger than the server accepts."""

    kind = ErrorKind.TOO_LARGE


class ModelNotFoundError(ServingError):
    """No such model, or no such version of it."""

    kind = ErrorKind.NOT_FOUND


class ModelNotReadyError(ServingError):
    """The model exists but is loading, failed to load, or is draining."""

    kind = ErrorKind.UNAVAILABLE


class QueueFullError(ServingError):
    """The model version's batch queue is full; retry later."""

    kind = ErrorKind.OVERLOADED


class DeadlineExceededError(ServingError):
    """The request's deadline passed before it was served."""

    kind = ErrorKind.DEADLINE_EXCEEDED


class UnsupportedError(ServingError):
    """A feature, extension or operation this server does not implement."""

    kind = ErrorKind.UNIMPLEMENTED


class UnsupportedDatatypeError(UnsupportedError):
    """A datatype this server does not implement."""


class UnauthenticatedError(ServingError):
    """The request carries no API key, or one the server does not know."""

    kind = ErrorKind.UNAUTHENTICATED


class PermissionDeniedError(ServingError):
    """The API key is valid but may not do this (another model, an admin operation)."""

    kind = ErrorKind.PERMISSION_DENIED


class ConflictError(ServingError):
    """An operator change the server's state forbids now (unloading a version traffic still
    goes to, rolling back an alias with no earlier target)."""

    kind = ErrorKind.CONFLICT


class GateError(ConflictError):
    """A version misses a release gate (or has no evaluation) and may not be promoted."""


class ModelExecutionError(ServingError):
    """The model raised while running a batch."""

    kind = ErrorKind.INTERNAL


class ModelOutputError(ModelExecutionError):
    """A model answered with outputs that break what model.yaml declares (names, datatypes,
    shapes, row counts): a bug in the model's code, named in the message the client sees."""

    shown = True


class ConfigError(ServingError):
    """A configuration file (model.yaml, settings) is invalid."""

    kind = ErrorKind.INVALID_INPUT


class FileReadError(ConfigError):
    """A file exists but could not be read (permissions, a folder where a file belongs, an I/O
    error): unlike invalid content this may pass, so a version that failed so is retried."""


class StartupError(ServingError):
    """The server's replicas could not start (a port taken, a replica's constructor failed)."""
