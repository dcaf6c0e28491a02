"""API keys: ``X-API-Key`` checked in constant time against ``GNAQ_API_KEYS``; keys are never logged."""

from __future__ import annotations

import hmac

from pydantic import SecretStr

from service.core.problems import Problem

HEADER = "X-API-Key"


def check_api_key(presented: str | None, keys: list[SecretStr]) -> None:
    """Raise a 401 problem unless ``presented`` equals one of ``keys``."""
    if not keys:
        raise Problem(401, "unauthorized", "this endpoint needs an API key, and none is configured "
                      "(set GNAQ_API_KEYS)", headers={"WWW-Authenticate": HEADER})
    if not presented:
        raise Problem(401, "unauthorized", f"missing {HEADER} header", headers={"WWW-Authenticate": HEADER})
    candidate = presented.encode()
    # Compare against every key, so the time taken does not tell which (or whether one) matched early.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(candidate, key.get_secret_value().encode())
    if not matched:
        raise Problem(401, "unauthorized", f"invalid {HEADER}", headers={"WWW-Authenticate": HEADER})
