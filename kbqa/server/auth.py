"""API key check: with `KBQA_API_KEY` (or `server.api_key`) set, every route but `/healthz`,
`GET /` and `/static/*` needs `Authorization: Bearer <key>`; a missing or wrong key gets 401.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from kbqa.server.errors import ApiError
from kbqa.server.state import SettingsDep

_bearer = HTTPBearer(
    auto_error=False,
    description="Needed when the server has an API key (KBQA_API_KEY); open otherwise.",
)


def require_api_key(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    expected = settings.server.api_key
    if not expected:
        return
    given = credentials.credentials if credentials is not None else ""
    # Constant time in the key's content: a timing probe learns nothing about a prefix.
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise ApiError(
            401,
            "unauthorized",
            "missing or wrong API key (send Authorization: Bearer <key>)",
            headers={"WWW-Authenticate": "Bearer"},
        )
