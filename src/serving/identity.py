"""Who runs a command, for audit entries and lineage records."""

from __future__ import annotations

import getpass
import os


def current_user() -> str:
    """The login name, or ``uid N`` where the process's user has no name: a container started with
    an arbitrary uid (OpenShift, ``docker run --user 12345``) has no passwd entry, and
    ``getpass.getuser()`` raises there instead of answering."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"
