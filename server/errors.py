"""What a client sees of a failure: an error id and a message, never a traceback.

Tracebacks name files, folders and library versions, which is this machine's business,
not a client's. The full error goes to the server log under an id (`err_...`); the
client gets the same id with the message, so an operator can find the one from the other.
"""
from __future__ import annotations

import uuid
from typing import Any

PRIVATE_FIELDS = ("traceback",)


def new_error_id() -> str:
    return "err_" + uuid.uuid4().hex[:16]


def public_error(error: dict[str, Any], error_id: str) -> dict[str, Any]:
    """`error` without private fields, carrying `error_id` (the caller logs the full error)."""
    return {**without_private_fields(error), "id": error_id}


def without_private_fields(error: dict[str, Any] | None) -> dict[str, Any] | None:
    """Also for records stored before errors were made public (they may hold a traceback)."""
    if error is None:
        return None
    return {k: v for k, v in error.items() if k not in PRIVATE_FIELDS}
