"""API keys: who may call the server, for which models, and who may administer it.

A key is ``sk-<id>.<secret>`` (id: 8 hex digits, secret: 32 random bytes, URL-safe base64). The
keys file stores, per key, its name, id, a random salt and ``sha256(salt + secret)``, the models
it may use (``*``: all) and whether it is an admin key; never the secret. A request's key is
found by its id and checked with a constant-time comparison. The file is read again when it
changes (checked at most once a second), so keys are added and revoked without a restart.
Nothing here logs a key or knows about HTTP or gRPC.
"""

from __future__ import annotations

import base64
import datetime as dt
import fcntl
import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from serving.errors import ConfigError, PermissionDeniedError, UnauthenticatedError
from serving.files import load_yaml

log = logging.getLogger(__name__)

PREFIX = "sk-"
RELOAD_EVERY_S = 1.0


@dataclass(frozen=True, slots=True)
class KeyRecord:
    name: str
    id: str
    salt: str
    sha256: str
    models: tuple[str, ...]
    admin: bool = False

    def matches(self, secret: str) -> bool:
        digest = hashlib.sha256((self.salt + secret).encode()).hexdigest()
        return hmac.compare_digest(digest, self.sha256)


@dataclass(frozen=True, slots=True)
class Principal:
    """The key a request was made with."""

    name: str
    models: tuple[str, ...]
    admin: bool

    @property
    def all_models(self) -> bool:
        return "*" in self.models or self.admin

    def check_model(self, model: str) -> None:
        """Raises PermissionDeniedError unless the key may use ``model``."""
        if not self.all_models and model not in self.models:
            raise PermissionDeniedError(f"API key {self.name!r} may not use model {model[:64]!r}")

    def check_all_models(self, what: str) -> None:
        """Server-wide listings (statistics of every model, repository index, the operator's numbers)."""
        if not self.all_models:
            raise PermissionDeniedError(f"API key {self.name!r} may not read {what}: it needs models '*' or admin")

    def check_admin(self, what: str) -> None:
        if not self.admin:
            raise PermissionDeniedError(f"API key {self.name!r} is not an admin key: {what} needs one")


def read_keys(path: Path) -> dict[str, KeyRecord]:
    """Key id -> record.

    Raises:
        ConfigError: the file is missing or malformed.
    """
    try:
        doc = load_yaml(path) or {}
    except FileNotFoundError:
        raise ConfigError(f"cannot read API keys file {path}: no such file") from None
    records = {}
    try:
        for item in doc.get("keys") or []:
            record = KeyRecord(
                name=str(item["name"]),
                id=str(item["id"]),
                salt=str(item["salt"]),
                sha256=str(item["sha256"]),
                models=tuple(str(m) for m in item.get("models", ["*"])),
                admin=bool(item.get("admin", False)),
            )
            records[record.id] = record
    except (KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"API keys file {path}: malformed entry ({exc})") from None
    return records


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One writer of the keys file at a time (two ``serving keys create`` at once both land)."""
    with open(path.with_name(f".{path.name}.lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def create_key(path: Path, name: str, models: tuple[str, ...] = ("*",), admin: bool = False) -> str:
    """Add a key to the file (created 0600 if absent) and return it: the only time it is shown.

    Raises:
        ConfigError: the name is taken or the file is malformed.
    """
    with _locked(path):
        return _create_key(path, name, models, admin)


def _create_key(path: Path, name: str, models: tuple[str, ...], admin: bool) -> str:
    doc: dict[str, Any] = {"keys": []}
    if path.exists():
        read_keys(path)  # validates
        doc = load_yaml(path) or {"keys": []}
        doc["keys"] = doc.get("keys") or []
    if any(k.get("name") == name for k in doc["keys"]):
        raise ConfigError(f"a key named {name!r} already exists in {path}")
    key_id = secrets.token_hex(4)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    salt = secrets.token_hex(16)
    doc["keys"].append(
        {
            "name": name,
            "id": key_id,
            "salt": salt,
            "sha256": hashlib.sha256((salt + secret).encode()).hexdigest(),
            "models": list(models),
            "admin": admin,
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
    )
    _write(path, doc)
    return f"{PREFIX}{key_id}.{secret}"


def revoke_key(path: Path, name: str) -> None:
    """Remove the key named ``name``.

    Raises:
        ConfigError: no such key.
    """
    with _locked(path):
        read_keys(path)
        doc = load_yaml(path) or {"keys": []}
        keys = doc.get("keys") or []
        kept = [k for k in keys if k.get("name") != name]
        if len(kept) == len(keys):
            raise ConfigError(f"no key named {name!r} in {path}")
        _write(path, {**doc, "keys": kept})


def _write(path: Path, doc: dict[str, Any]) -> None:
    """Replace the file atomically (a server reading it sees the old or the new one), mode 0600."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        yaml.safe_dump(doc, f, sort_keys=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Authenticator:
    """Checks ``Authorization: Bearer <key>`` values against a keys file it keeps current."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._records = read_keys(path)
        self._mtime = self._stat()
        self._checked = time.monotonic()
        self._lock = threading.Lock()
        self._invalid = ""  # why the file on disk is refused (then no key is accepted)

    def _stat(self) -> tuple[int, int]:
        try:
            st = self.path.stat()
        except OSError:
            return (0, 0)
        return (st.st_mtime_ns, st.st_size)

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < RELOAD_EVERY_S:
            return
        with self._lock:
            self._checked = now
            stamp = self._stat()
            if stamp != self._mtime:
                try:
                    self._records = read_keys(self.path)
                    self._invalid = ""
                except ConfigError as exc:
                    # Fail closed: keeping the last good keys would keep revoked ones working.
                    # Writes by `serving keys` are atomic, so only a broken hand edit gets here.
                    self._records = {}
                    self._invalid = exc.message
                    log.error("API keys file refused, no key is accepted until it is fixed: %s", exc.message)
                self._mtime = stamp

    def check_health(self, authorization: str | None, probe_token: str | None) -> None:
        """A protected health check: the replica's own probe token, or any valid key.

        Raises:
            UnauthenticatedError: neither.
        """
        if probe_token is not None and authorization is not None:
            if hmac.compare_digest(authorization.encode("latin-1"), f"Bearer {probe_token}".encode()):
                return
        self.authenticate(authorization)

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal of an ``Authorization`` header (or metadata) value.

        Raises:
            UnauthenticatedError: missing, not a bearer key, or unknown.
        """
        self._refresh()
        if self._invalid:
            raise UnauthenticatedError("the server's API keys file is invalid: no key is accepted until it is fixed")
        if not authorization:
            raise UnauthenticatedError("missing API key: send 'Authorization: Bearer <key>'")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise UnauthenticatedError("the Authorization header must be 'Bearer <key>'")
        key_id, _, secret = token.strip().removeprefix(PREFIX).partition(".")
        record = self._records.get(key_id)
        if record is None or not secret or not record.matches(secret):
            raise UnauthenticatedError("unknown API key")
        return Principal(record.name, record.models, record.admin)


@dataclass(slots=True)
class AccessPolicy:
    """Who may call what, the one check both transports make (they pass the ``authorization``
    header or metadata value; ``anonymous`` names the caller when keys are off).

    Without keys (``auth`` None) everything is open. With keys: inference, metadata and
    statistics need a key allowed the model (server-wide listings: every model); operator
    commands need an admin key; health is open unless ``protect_health``, and then takes any
    valid key or this replica's own ``probe_token``.
    """

    auth: Authenticator | None = None
    protect_health: bool = False
    probe_token: str | None = None

    def check(self, authorization: str | None, *, model: str = "", all_models: str = "") -> Principal | None:
        """The caller's principal (None with keys off), allowed ``model`` or, naming ``all_models``,
        every model.

        Raises:
            UnauthenticatedError, PermissionDeniedError.
        """
        if self.auth is None:
            return None
        principal = self.auth.authenticate(authorization)
        if model:
            principal.check_model(model)
        if all_models:
            principal.check_all_models(all_models)
        return principal

    def check_health(self, authorization: str | None) -> None:
        """Raises UnauthenticatedError when health is protected and neither a key nor the probe token came."""
        if self.protect_health and self.auth is not None:
            self.auth.check_health(authorization, self.probe_token)

    def check_admin(self, authorization: str | None, what: str, anonymous: str) -> str:
        """Who is asking, for the audit log: the admin key's name, or ``anonymous`` with keys off.

        Raises:
            UnauthenticatedError, PermissionDeniedError: not an admin key.
        """
        principal = self.check(authorization)
        if principal is None:
            return anonymous
        principal.check_admin(what)
        return principal.name
