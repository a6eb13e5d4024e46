"""Who is calling the jobs API: a trusted backend (API key) or an end user (Supabase JWT).

``Authorization: Bearer <token>``:

* the token equals one of ``EXPORT_API_KEYS`` (comma-separated; compared in
  constant time against every key) -> a *trusted* principal. It names the user
  it acts for with ``user_id`` in the body or query.
* otherwise the token must be a Supabase JWT: HS256 signed with
  ``SUPABASE_JWT_SECRET``, or RS256/ES256 signed by a key from
  ``SUPABASE_JWKS_URL``; audience ``authenticated``; ``exp`` and ``sub``
  required; 30 s leeway; a lifetime of at most ``JWT_MAX_LIFETIME_SECONDS``
  (7 days; ``exp`` minus ``iat``, and ``exp`` from now); its ``role`` claim in ``JWT_ACCEPTED_ROLES`` (default
  ``authenticated`` only). The principal's user is ``sub`` (a UUID).

Failures are :class:`AuthError`: 401 for a missing, malformed, forged or expired
token, or any other failure while verifying it; 403 for a role that is not
accepted, or when an end user names another user; 503 when the JWKS endpoint
cannot be reached (the token may be fine; we cannot tell).
"""

from __future__ import annotations

import functools
import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import jwt

from shared.config import ApiSettings

AUDIENCE = "authenticated"
LEEWAY_SECONDS = 30
ASYMMETRIC_ALGORITHMS = ("RS256", "ES256")
JWKS_TIMEOUT_SECONDS = 5


class AuthError(Exception):
    """Authentication (401), authorisation (403) or key-fetch (503) failure."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Principal:
    """``trusted`` backends act for any user; end users (``user_id`` = JWT ``sub``) for themselves."""

    user_id: str | None
    trusted: bool

    def acting_for(self, requested: str | None) -> str | None:
        """The user a request acts for.

        Trusted: `requested` (None: no particular user). End user: their own id;
        naming anybody else is a 403.
        """
        if self.trusted:
            return requested
        if requested is not None and _same_user(requested, self.user_id):
            return self.user_id
        if requested is not None:
            raise AuthError(403, "user_id names another user; only a trusted API key may act for other users")
        return self.user_id


def _same_user(a: str, b: str | None) -> bool:
    if b is None:
        return False
    try:
        return UUID(a) == UUID(b)
    except ValueError:
        return a == b


def api_keys(settings: ApiSettings) -> list[str]:
    return [k.strip() for k in settings.export_api_keys.split(",") if k.strip()]


def bearer_token(headers: Mapping[str, str]) -> str:
    value = headers.get("authorization")
    if value is None:
        value = headers.get("Authorization")
    if not value:
        raise AuthError(401, "missing Authorization header; send 'Authorization: Bearer <token>'")
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError(401, "Authorization header must be 'Bearer <token>'")
    return token.strip()


def _is_api_key(token: str, keys: list[str]) -> bool:
    presented = token.encode("utf-8")
    matched = False
    for key in keys:  # every key is compared: no early exit that leaks which one matched
        matched |= hmac.compare_digest(presented, key.encode("utf-8"))
    return matched


@functools.lru_cache(maxsize=8)
def jwks_client(url: str) -> jwt.PyJWKClient:
    """One client (with its key cache) per JWKS URL for the process."""
    return jwt.PyJWKClient(url, cache_keys=True, lifespan=300, timeout=JWKS_TIMEOUT_SECONDS)


def needs_network(settings: ApiSettings) -> bool:
    """True when authenticating may fetch the JWKS (blocking I/O: run it in a thread)."""
    return bool(settings.supabase_jwks_url)


def authenticate(headers: Mapping[str, str], settings: ApiSettings) -> Principal:
    """The caller's principal, or :class:`AuthError`. May block on a JWKS fetch (cached)."""
    token = bearer_token(headers)
    keys = api_keys(settings)
    if keys and _is_api_key(token, keys):
        return Principal(user_id=None, trusted=True)
    if not settings.supabase_jwt_secret and not settings.supabase_jwks_url:
        raise AuthError(401, "token is not an API key, and JWT sign-in is not configured on this worker")
    try:
        claims = verify_jwt(token, settings)
    except AuthError:
        raise
    except Exception as exc:  # e.g. an ES256 header naming an RSA key: the library's surprise is still a bad token
        raise AuthError(401, f"token cannot be verified: {type(exc).__name__}") from None
    role = claims.get("role")
    if role not in settings.jwt_accepted_roles:
        if role is None:
            raise AuthError(401, "token has no 'role' claim")
        accepted = ", ".join(settings.jwt_accepted_roles)
        raise AuthError(403, f"token role {role!r} is not accepted here (JWT_ACCEPTED_ROLES: {accepted})")
    sub = claims.get("sub")
    try:
        user_id = str(UUID(str(sub)))
    except ValueError:
        raise AuthError(401, "token subject (sub) is not a user id (UUID)") from None
    return Principal(user_id=user_id, trusted=False)


def verify_jwt(token: str, settings: ApiSettings) -> dict[str, Any]:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:
        raise AuthError(401, "bearer token is neither an API key nor a well-formed JWT") from None
    alg = header.get("alg")
    key: Any
    if alg == "HS256":
        if not settings.supabase_jwt_secret:
            raise AuthError(401, "HS256 tokens are not accepted: SUPABASE_JWT_SECRET is not configured")
        key = settings.supabase_jwt_secret
    elif alg in ASYMMETRIC_ALGORITHMS:
        if not settings.supabase_jwks_url:
            raise AuthError(401, f"{alg} tokens are not accepted: SUPABASE_JWKS_URL is not configured")
        try:
            key = jwks_client(settings.supabase_jwks_url).get_signing_key_from_jwt(token).key
        except jwt.PyJWKClientConnectionError as exc:
            raise AuthError(503, f"cannot fetch the signing keys to verify the token: {exc}") from None
        except (jwt.PyJWKClientError, jwt.InvalidTokenError) as exc:
            raise AuthError(401, f"token signing key is unknown: {exc}") from None
    else:
        raise AuthError(401, f"token algorithm {alg!r} is not accepted (HS256, RS256, ES256)")
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[alg],
            audience=AUDIENCE,
            leeway=LEEWAY_SECONDS,
            options={"require": ["exp", "sub"]},
        )
    except jwt.ExpiredSignatureError:
        raise AuthError(401, "token has expired") from None
    except jwt.InvalidSignatureError:
        raise AuthError(401, "token signature is invalid") from None
    except jwt.InvalidAudienceError:
        raise AuthError(401, f"token audience must be {AUDIENCE!r}") from None
    except jwt.MissingRequiredClaimError as exc:
        raise AuthError(401, f"token is missing the {exc.claim!r} claim") from None
    except jwt.InvalidTokenError as exc:
        raise AuthError(401, f"token is invalid: {exc}") from None
    _check_lifetime(claims, settings.jwt_max_lifetime_seconds)
    return claims


def _check_lifetime(claims: dict[str, Any], max_seconds: int) -> None:
    """A token that lives longer than JWT_MAX_LIFETIME_SECONDS is refused (one leaked with exp in 2999 is
    otherwise good forever): measured from its iat when it has one, and from now in any case."""
    exp = claims["exp"]  # PyJWT has checked it is an integer in the future
    lifetime = exp - time.time()
    iat = claims.get("iat")
    if isinstance(iat, int | float) and not isinstance(iat, bool):
        lifetime = max(lifetime, exp - iat)
    if lifetime > max_seconds + LEEWAY_SECONDS:
        raise AuthError(
            401, f"token lifetime is {int(lifetime)} s, more than JWT_MAX_LIFETIME_SECONDS ({max_seconds} s)")
