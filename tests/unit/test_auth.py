"""supervisor.http.auth: API keys, HS256 and JWKS (RS256/ES256) Supabase JWTs."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from shared.config import ApiSettings
from supervisor.http.auth import AuthError, Principal, authenticate, jwks_client

pytestmark = pytest.mark.timeout(300)

SECRET = "super-secret-jwt-token-with-at-least-32-characters-long"
USER = "3f1c2b9e-7f5a-4c51-9a43-0a8f4f1d2e11"
OTHER = "7d0c4b7e-2a43-4d4f-9a8e-5b9d7e1f3c22"
SETTINGS = ApiSettings(export_api_keys=" key-one ,key-two,", supabase_jwt_secret=SECRET)


def claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    out: dict[str, Any] = {"sub": USER, "aud": "authenticated", "role": "authenticated", "exp": now + 300, "iat": now}
    out.update(extra)
    return {k: v for k, v in out.items() if v is not None}


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def hs(**extra: Any) -> str:
    return jwt.encode(claims(**extra), SECRET, algorithm="HS256")


def fails(headers: dict[str, str], settings: ApiSettings = SETTINGS, status: int = 401) -> str:
    with pytest.raises(AuthError) as info:
        authenticate(headers, settings)
    assert info.value.status == status
    return info.value.message


def test_api_keys_are_trusted() -> None:
    for key in ("key-one", "key-two"):
        assert authenticate(bearer(key), SETTINGS) == Principal(user_id=None, trusted=True)
    assert authenticate({"Authorization": "bearer key-two"}, SETTINGS).trusted


def test_empty_key_entries_never_match() -> None:
    fails({"authorization": "Bearer "})
    fails(bearer("key"), ApiSettings(export_api_keys=",,", supabase_jwt_secret=""))


def test_missing_or_malformed_header() -> None:
    assert "missing Authorization" in fails({})
    assert "Bearer" in fails({"authorization": "Basic abc"})
    assert "well-formed" in fails(bearer("not.a.jwt"))


def test_hs256_user() -> None:
    principal = authenticate(bearer(hs()), SETTINGS)
    assert principal == Principal(user_id=USER, trusted=False)


def test_leeway_accepts_just_expired() -> None:
    assert authenticate(bearer(hs(exp=int(time.time()) - 10)), SETTINGS).user_id == USER


def test_rejections() -> None:
    assert "expired" in fails(bearer(hs(exp=int(time.time()) - 120)))
    assert "signature" in fails(bearer(jwt.encode(claims(), "x" * 40, algorithm="HS256")))
    assert "audience" in fails(bearer(hs(aud="anon")))
    assert "'exp'" in fails(bearer(hs(exp=None)))
    assert "'sub'" in fails(bearer(hs(sub=None)))
    assert "UUID" in fails(bearer(hs(sub="alice")))
    unsigned = jwt.encode(claims(), "", algorithm="none")
    assert "not accepted" in fails(bearer(unsigned))


def test_hs256_refused_when_no_secret() -> None:
    only_keys = ApiSettings(export_api_keys="k")
    assert "not configured" in fails(bearer(hs()), only_keys)


def test_acting_for() -> None:
    user = Principal(USER, trusted=False)
    assert user.acting_for(None) == USER
    assert user.acting_for(USER.upper()) == USER
    with pytest.raises(AuthError) as info:
        user.acting_for(OTHER)
    assert info.value.status == 403
    trusted = Principal(None, trusted=True)
    assert trusted.acting_for(OTHER) == OTHER
    assert trusted.acting_for(None) is None


# ---- JWKS ---------------------------------------------------------------------------


@pytest.fixture
def jwks() -> Iterator[tuple[str, Any, Any]]:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rsa_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key()))
    ec_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key()))
    rsa_jwk.update(kid="rsa-1", alg="RS256", use="sig")
    ec_jwk.update(kid="ec-1", alg="ES256", use="sig")
    body = json.dumps({"keys": [rsa_jwk, ec_jwk]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    jwks_client.cache_clear()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/auth/v1/.well-known/jwks.json", rsa_key, ec_key
    finally:
        server.shutdown()
        server.server_close()
        jwks_client.cache_clear()


def test_jwks_rs256_and_es256(jwks: tuple[str, Any, Any]) -> None:
    url, rsa_key, ec_key = jwks
    settings = ApiSettings(supabase_jwks_url=url)
    rs = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
    es = jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "ec-1"})
    assert authenticate(bearer(rs), settings).user_id == USER
    assert authenticate(bearer(es), settings).user_id == USER
    # Signed by a key that is not in the set.
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(claims(), stranger, algorithm="RS256", headers={"kid": "rsa-1"})
    assert "signature" in fails(bearer(forged), settings)
    unknown_kid = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "nope"})
    assert "unknown" in fails(bearer(unknown_kid), settings)
    # HS256 is refused when only JWKS is configured (no algorithm confusion).
    assert "not configured" in fails(bearer(hs()), settings)


def test_jwks_unreachable_is_503() -> None:
    jwks_client.cache_clear()
    try:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        token = jwt.encode(claims(), key, algorithm="RS256", headers={"kid": "k"})
        fails(bearer(token), ApiSettings(supabase_jwks_url="http://127.0.0.1:1/jwks.json"), status=503)
    finally:
        jwks_client.cache_clear()
