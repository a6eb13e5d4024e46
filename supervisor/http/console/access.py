"""Who may use the console: operator keys, signed session cookies, CSRF tokens, a sign-in rate limit.

The session cookie is ``payload.signature``: the payload names the operator, the
expiry and a random nonce; the signature is HMAC-SHA256 under a secret derived
from CONSOLE_KEYS (so every worker behind a load balancer accepts it, and
changing the keys signs everyone out). The CSRF token is the HMAC of the
session's nonce: bound to the session, checked on every POST.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections import deque
from collections.abc import Callable

import msgspec

COOKIE_NAME = "console_session"
SIGNIN_WINDOW_SECONDS = 60.0


class Session(msgspec.Struct, frozen=True):
    operator: str
    expires: int  # unix seconds
    nonce: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Access:
    def __init__(
        self,
        operators: dict[str, str],
        *,
        session_seconds: int,
        signin_limit_per_minute: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not operators:
            raise ValueError("the console needs at least one operator key (CONSOLE_KEYS)")
        self.operators = operators
        self.session_seconds = session_seconds
        self.signin_limit = signin_limit_per_minute
        self._clock = clock
        material = "\0".join(f"{name}:{key}" for name, key in sorted(operators.items()))
        self._secret = hashlib.sha256(b"export-worker console session\0" + material.encode()).digest()
        self._attempts: dict[str, deque[float]] = {}

    # ---- signing in ------------------------------------------------------------

    def signin_wait(self, client: str) -> float:
        """Seconds until `client` may try again (0: now), counting this attempt when allowed."""
        now = self._clock()
        attempts = self._attempts.setdefault(client, deque())
        while attempts and attempts[0] <= now - SIGNIN_WINDOW_SECONDS:
            attempts.popleft()
        if len(attempts) >= self.signin_limit:
            return attempts[0] + SIGNIN_WINDOW_SECONDS - now
        attempts.append(now)
        if len(self._attempts) > 10_000:  # a flood of addresses cannot grow this without bound
            self._forget_idle(now)
        return 0.0

    def _forget_idle(self, now: float) -> None:
        for client in [c for c, a in self._attempts.items() if not a or a[-1] <= now - SIGNIN_WINDOW_SECONDS]:
            del self._attempts[client]

    def operator_for(self, key: str) -> str | None:
        """The operator whose key this is; every key is compared, in constant time."""
        found = None
        for name, known in self.operators.items():
            if hmac.compare_digest(known.encode(), key.encode()):
                found = name
        return found

    # ---- sessions --------------------------------------------------------------

    def new_session(self, operator: str) -> tuple[Session, str]:
        session = Session(operator, int(self._clock()) + self.session_seconds, secrets.token_urlsafe(16))
        payload = _b64(msgspec.json.encode(session))
        return session, f"{payload}.{self._sign(payload.encode())}"

    def read_session(self, cookie: str | None) -> Session | None:
        if not cookie or cookie.count(".") != 1:
            return None
        payload, signature = cookie.split(".")
        # Bytes: compare_digest refuses str with non-ASCII characters (a TypeError, not a refusal).
        expected = self._sign(payload.encode("utf-8", "replace")).encode()
        if not hmac.compare_digest(signature.encode("utf-8", "replace"), expected):
            return None
        try:
            session = msgspec.json.decode(_unb64(payload), type=Session)
        except (ValueError, msgspec.DecodeError):
            return None
        if session.expires <= self._clock() or session.operator not in self.operators:
            return None
        return session

    def csrf_token(self, session: Session) -> str:
        return self._sign(b"csrf\0" + session.nonce.encode())

    def csrf_ok(self, session: Session, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(str(token).encode("utf-8", "replace"),
                                                   self.csrf_token(session).encode())

    def _sign(self, data: bytes) -> str:
        return _b64(hmac.new(self._secret, data, hashlib.sha256).digest())
