"""API keys and per-key quotas: what "API access, metering and security" means for a model
behind an endpoint.

Keys come from a JSON file or the ``MAASKIT_API_KEYS`` environment variable (the same JSON):
``[{"name": "alice", "key": "sk-...", "rpm": 60, "tpm": 20000}, ...]``. ``name`` is what metrics
and logs show; the key itself is never logged or shown. ``rpm`` (requests per minute) and ``tpm``
(tokens per minute: prompt plus completion) are limits over a sliding minute; leave them out for
no limit. A request is admitted against its worst case (prompt + ``max_tokens`` x ``n``), and its
real count replaces that once it has finished.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ENV", "APIKey", "APIKeys", "RateLimited"]

ENV = "MAASKIT_API_KEYS"
WINDOW = 60.0


class RateLimited(Exception):
    def __init__(self, message: str, retry_after: float, headers: dict[str, str]):
        super().__init__(message)
        self.retry_after, self.headers = retry_after, {**headers, "Retry-After": str(max(1, math.ceil(retry_after)))}


@dataclass
class _Use:
    at: float
    tokens: int


@dataclass(eq=False)
class APIKey:
    name: str
    key: str = field(repr=False)  # never shown
    rpm: int | None = None
    tpm: int | None = None
    _uses: deque[_Use] = field(default_factory=deque, repr=False)


class APIKeys:
    """The keys a server accepts, and what each has used in the last minute."""

    def __init__(self, keys: list[APIKey], clock: Callable[[], float] = time.monotonic):
        names = [k.name for k in keys]
        if len(set(names)) != len(names):
            raise ValueError("API key names must be different from one another")
        self._by_key = {k.key: k for k in keys}
        if len(self._by_key) != len(keys):
            raise ValueError("two API keys are the same")
        self.clock = clock
        self._lock = threading.Lock()

    @classmethod
    def parse(cls, text: str, where: str = "API keys") -> APIKeys:
        try:
            entries = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not JSON ({err})") from None
        if not isinstance(entries, list) or not entries:
            raise ValueError(f'{where}: expected a list like [{{"name": "alice", "key": "sk-...", "rpm": 60}}]')
        keys = []
        for i, e in enumerate(entries):
            if not isinstance(e, dict) or not isinstance(e.get("name"), str) or not isinstance(e.get("key"), str):
                raise ValueError(f"{where}: entry {i} needs a string 'name' and 'key'")
            if len(e["key"]) < 8:
                raise ValueError(f"{where}: the key of {e['name']!r} is shorter than 8 characters")
            for limit in ("rpm", "tpm"):
                if e.get(limit) is not None and (not isinstance(e[limit], int) or e[limit] < 1):
                    raise ValueError(f"{where}: {e['name']}'s {limit} must be a whole number of at least 1")
            keys.append(APIKey(e["name"], e["key"], e.get("rpm"), e.get("tpm")))
        return cls(keys)

    @classmethod
    def load(cls, path: str | Path | None = None) -> APIKeys | None:
        """From ``path``, else from the environment variable, else None (no keys: no key checks)."""
        if path is not None:
            return cls.parse(Path(path).read_text(), str(path))
        if os.environ.get(ENV):
            return cls.parse(os.environ[ENV], f"${ENV}")
        return None

    def identify(self, authorization: str | bytes) -> APIKey | None:
        """The key a ``Authorization: Bearer ...`` header carries, if it is one of ours."""
        if isinstance(authorization, bytes):
            authorization = authorization.decode("latin-1")
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return None
        for known, key in self._by_key.items():  # compare_digest against each: no timing clue
            if secrets.compare_digest(known.encode(), given.strip().encode()):
                return key
        return None

    def _expire(self, key: APIKey, now: float) -> None:
        while key._uses and key._uses[0].at <= now - WINDOW:
            key._uses.popleft()

    def headers(self, key: APIKey) -> dict[str, str]:
        """OpenAI's ``x-ratelimit-*`` headers for ``key`` now."""
        now = self.clock()
        with self._lock:
            self._expire(key, now)
            return self._headers(key, now)

    def _headers(self, key: APIKey, now: float) -> dict[str, str]:
        out = {}
        reset = f"{max(0.0, key._uses[0].at + WINDOW - now):.1f}s" if key._uses else "0s"
        if key.rpm is not None:
            out.update(
                {
                    "x-ratelimit-limit-requests": str(key.rpm),
                    "x-ratelimit-remaining-requests": str(max(0, key.rpm - len(key._uses))),
                    "x-ratelimit-reset-requests": reset,
                }
            )
        if key.tpm is not None:
            out.update(
                {
                    "x-ratelimit-limit-tokens": str(key.tpm),
                    "x-ratelimit-remaining-tokens": str(max(0, key.tpm - sum(u.tokens for u in key._uses))),
                    "x-ratelimit-reset-tokens": reset,
                }
            )
        return out

    def admit(self, key: APIKey, tokens: int) -> _Use:
        """Count a request that may use up to ``tokens``, or raise RateLimited (a 429)."""
        now = self.clock()
        with self._lock:
            self._expire(key, now)
            used = sum(u.tokens for u in key._uses)
            if key.tpm is not None and tokens > key.tpm:
                raise RateLimited(
                    f"this request may use {tokens} tokens, more than {key.name}'s limit of {key.tpm} per minute: "
                    "lower max_tokens or n",
                    WINDOW,
                    self._headers(key, now),
                )
            if key.rpm is not None and len(key._uses) >= key.rpm:
                wait = key._uses[0].at + WINDOW - now
                raise RateLimited(
                    f"rate limit reached for {key.name}: {key.rpm} requests per minute; try again in {wait:.1f} s",
                    wait,
                    self._headers(key, now),
                )
            if key.tpm is not None and used + tokens > key.tpm:
                freed, wait = used + tokens - key.tpm, 0.0
                for u in key._uses:  # how long until enough of the minute's tokens fall out of it
                    freed -= u.tokens
                    wait = u.at + WINDOW - now
                    if freed <= 0:
                        break
                raise RateLimited(
                    f"rate limit reached for {key.name}: {key.tpm} tokens per minute (used {used}, this request "
                    f"may use {tokens}); try again in {wait:.1f} s",
                    wait,
                    self._headers(key, now),
                )
            use = _Use(now, tokens)
            key._uses.append(use)
            return use

    def settle(self, use: _Use, tokens: int) -> None:
        """The tokens a request really used, once it is done (its admission counted the worst case)."""
        with self._lock:
            use.tokens = tokens
