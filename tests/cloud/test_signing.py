"""RS256 signing per PROTOCOL.md section 2, and the verifier the simulator uses."""

from __future__ import annotations

import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from coda_bridge.cloud import signing as auth
from coda_bridge.cloud.signing import (
    Signer,
    generate_private_key_pem,
    looks_like_jwt,
    public_key_pem,
    verify_token,
)
from coda_bridge.errors import AuthError


@pytest.fixture(scope="module")
def key_pem() -> str:
    return generate_private_key_pem()


def test_a_token_carries_the_protocol_header_and_claims(key_pem: str) -> None:
    token = Signer(key_pem, "qpu-a-1", "a").sign(now=1_700_000_000)
    assert jwt.get_unverified_header(token) == {"alg": "RS256", "kid": "qpu-a-1", "typ": "JWT"}
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims == {"sub": "a", "iss": "coda", "iat": 1_700_000_000, "exp": 1_700_003_600}


def test_verify_accepts_a_fresh_token_and_checks_kid_and_sub(key_pem: str) -> None:
    token = Signer(key_pem, "kid-1", "q1").sign()
    public = public_key_pem(key_pem)
    assert verify_token(token, public, expected_kid="kid-1", expected_sub="q1")["sub"] == "q1"
    with pytest.raises(AuthError, match="kid"):
        verify_token(token, public, expected_kid="kid-2")
    with pytest.raises(AuthError, match="sub"):
        verify_token(token, public, expected_sub="other")


def test_verify_refuses_expired_and_foreign_tokens(key_pem: str) -> None:
    public = public_key_pem(key_pem)
    old = Signer(key_pem, "k", "q").sign(now=time.time() - 7200)
    with pytest.raises(AuthError, match="expired"):
        verify_token(old, public)
    foreign = Signer(generate_private_key_pem(), "k", "q").sign()
    with pytest.raises(AuthError, match="rejected"):
        verify_token(foreign, public)
    with pytest.raises(AuthError, match="well-formed"):
        verify_token("not-a-jwt", public)


def test_a_token_checked_once_still_expires(key_pem: str, monkeypatch: pytest.MonkeyPatch) -> None:
    public = public_key_pem(key_pem)
    now = time.time()
    token = Signer(key_pem, "k", "q").sign(now=now - auth.JWT_LIFETIME_SEC + 30)
    assert verify_token(token, public)["sub"] == "q"

    monkeypatch.setattr(time, "time", lambda: now + 60)

    with pytest.raises(AuthError, match="expired"):
        verify_token(token, public)


def test_a_garbled_key_is_an_auth_error_that_never_shows_the_key() -> None:
    garbled = "-----BEGIN PRIVATE KEY-----\nTOPSECRETMATERIAL\n-----END PRIVATE KEY-----\n"
    with pytest.raises(AuthError) as caught:
        Signer(garbled, "k", "q")
    assert "TOPSECRETMATERIAL" not in str(caught.value)
    assert "BEGIN" not in str(caught.value)


def _pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def test_a_non_rsa_key_is_refused() -> None:
    pem = _pem(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(AuthError, match="not an RSA key") as caught:
        Signer(pem, "k", "q")
    assert pem.splitlines()[1] not in str(caught.value)


@pytest.mark.parametrize("parts", [("e",), ("d", "dmp1"), ("d", "dmq1")])
def test_a_key_that_cannot_sign_is_refused_as_damaged_without_showing_it(
    key_pem: str, parts: tuple[str, ...]
) -> None:
    # given the node's key with parts changed so that what it signs no longer verifies (a damaged file
    # that still parses; OpenSSL signs right past one wrong private part, so two are changed)
    numbers = serialization.load_pem_private_key(key_pem.encode(), password=None).private_numbers()  # type: ignore[union-attr]
    private = {name: getattr(numbers, name) for name in ("p", "q", "d", "dmp1", "dmq1", "iqmp")}
    public = {"e": numbers.public_numbers.e, "n": numbers.public_numbers.n}
    for part in parts:
        (public if part in public else private)[part] += 2
    damaged = _pem(
        rsa.RSAPrivateNumbers(**private, public_numbers=rsa.RSAPublicNumbers(**public)).private_key(
            unsafe_skip_rsa_key_validation=True
        )
    )

    # when a signer is made from it, then it is refused by name, and the key is not shown
    with pytest.raises(AuthError, match="is damaged: its signatures do not verify") as caught:
        Signer(damaged, "k", "q")
    assert damaged.splitlines()[1] not in str(caught.value)


def test_the_key_is_parsed_once_per_process(key_pem: str) -> None:
    Signer(key_pem, "k", "q")
    before = auth._load_private_key.cache_info()
    for _ in range(5):
        Signer(key_pem, "k", "q").sign()
    after = auth._load_private_key.cache_info()
    assert after.misses == before.misses
    assert after.hits == before.hits + 5


def test_a_token_reused_within_its_second_is_what_a_fresh_signature_would_be(key_pem: str) -> None:
    signer = Signer(key_pem, "k", "q")
    first = signer.sign(now=1_700_000_000.1)

    again = signer.sign(now=1_700_000_000.9)
    fresh = Signer(key_pem, "k", "q").sign(now=1_700_000_000.5)
    next_second = signer.sign(now=1_700_000_001.0)

    assert again is first
    assert fresh == first
    assert jwt.decode(next_second, options={"verify_signature": False})["iat"] == 1_700_000_001


def test_repr_hides_the_key(key_pem: str) -> None:
    assert "PRIVATE" not in repr(Signer(key_pem, "k", "q"))


def test_jwt_shape_rule() -> None:
    assert looks_like_jwt("a.b.c")
    assert not looks_like_jwt("opaque-token")
    assert not looks_like_jwt("a.b")
