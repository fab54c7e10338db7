"""Authentication: the API key header and the bearer token.

The token is either given as is (static: when it expires the run must stop) or obtained
from the auth-token endpoint with an email and password, renewed shortly before it
expires and once more whenever the API answers 401 to the token we hold.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from .models import parse_api_date
from .secret import Secret

API_KEY_HEADER = "X-Streaks-Api-Key"
RENEW_BEFORE_MAX_S = 300.0  # renew at most this long before expiry...
RENEW_BEFORE_SHARE = 0.1  # ...or this share of the token's lifetime, whichever is smaller

# fetch(email, password) -> (token, expiration as epoch seconds or None)
TokenFetcher = Callable[[str, str], Awaitable[tuple[str, float | None]]]


class Auth:
    """Holds the credentials and hands out the headers for each request."""

    def __init__(
        self,
        api_key: Secret,
        *,
        token: Secret | None = None,
        email: str | None = None,
        password: Secret | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._api_key = api_key
        self._token = token.get() if token else None
        self._email = email
        self._password = password
        self._clock = clock
        self._renew_at: float | None = None
        self._lock = asyncio.Lock()
        self.renewals = 0

    @property
    def can_renew(self) -> bool:
        """True when email and password let us obtain new tokens."""
        return bool(self._email and self._password)

    def _needs_token(self) -> bool:
        if self._token is None:
            return True
        return self.can_renew and self._renew_at is not None and self._clock() >= self._renew_at

    async def headers(self, fetch: TokenFetcher) -> tuple[dict[str, str], str | None]:
        """Headers for one request and the token they carry (to report it stale after a 401)."""
        if self._needs_token() and self.can_renew:
            await self._renew(fetch, stale=self._token)
        headers = {API_KEY_HEADER: self._api_key.get()}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers, self._token

    def api_key_header(self) -> dict[str, str]:
        """Only the API key header (the auth-token endpoint takes no bearer token)."""
        return {API_KEY_HEADER: self._api_key.get()}

    async def renew_after_401(self, fetch: TokenFetcher, stale: str | None) -> bool:
        """After a 401 with token `stale`: get a new token if we can. True if the caller may retry."""
        if not self.can_renew:
            return False
        await self._renew(fetch, stale=stale)
        return self._token is not None and self._token != stale

    async def _renew(self, fetch: TokenFetcher, *, stale: str | None) -> None:
        async with self._lock:
            if self._token is not None and self._token != stale:
                return  # another task renewed while we waited
            assert self._email and self._password
            token, expires_at = await fetch(self._email, self._password.get())
            now = self._clock()
            self._token = token
            if expires_at is not None:
                lifetime = max(0.0, expires_at - now)
                self._renew_at = expires_at - min(RENEW_BEFORE_MAX_S, lifetime * RENEW_BEFORE_SHARE)
            else:
                self._renew_at = None
            self.renewals += 1


def expiration_epoch(value: str | None) -> float | None:
    """The `expiration` DateString of an auth-token answer as epoch seconds."""
    dt = parse_api_date(value)
    return dt.timestamp() if dt else None
