"""Skipped files, logged once per process however often they are met (indexing, decoding, writing)."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

# Skipped files already logged in this process (a file is logged once, however often indexed).
_LOGGED: set[str] = set()


def log_skip_once(what: str, reason: str) -> bool:
    """Logs `what` as skipped with `reason` the first time this process sees it."""
    if what in _LOGGED:
        return False
    _LOGGED.add(what)
    log.warning("skipping %s: %s", what, reason)
    return True
