"""RS256 signing of the node's JWTs (PROTOCOL.md section 2), and their verification.

A PEM key is parsed once per process and reused: parsing costs far more
than signing, and a fresh token is signed for every request.  It is checked
by signing with it and verifying with its public half, not by OpenSSL's key
validation (primality tests: about 36 ms per process of the node, against
about 1 ms): a key whose signatures would not verify is refused by name.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Callable
from typing import Any

import jwt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ..errors import AuthError
from .clock import host_time

__all__ = [
    "JWT_ISSUER",
    "JWT_LIFETIME_SEC",
    "Signer",
    "generate_private_key_pem",
    "looks_like_jwt",
    "public_key_pem",
    "unverified_kid",
    "verify_token",
]

#: The ``iss`` claim the cloud expects.
JWT_ISSUER = "coda"
#: How long a signed token stays valid.
JWT_LIFETIME_SEC = 3600
#: RSA key size the cloud issues.
RSA_KEY_BITS = 2048
#: What a key signs, and its public half verifies, to show that its signatures are right.
_SELF_TEST_MESSAGE = b"coda-bridge key self-test"


def generate_private_key_pem() -> str:
    """A fresh RSA-2048 private key as PKCS#8 PEM (what the cloud hands out)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def public_key_pem(private_key_pem: str) -> str:
    """The public half of ``private_key_pem``, as SubjectPublicKeyInfo PEM."""
    return (
        _load_private_key(private_key_pem)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )


def looks_like_jwt(bearer: str) -> bool:
    """The cloud's own rule: a bearer with exactly three dot-separated parts is a JWT."""
    return bearer.count(".") == 2


def _fingerprint(pem: str) -> str:
    """A short, non-reversible name for a key, safe to show in messages."""
    return hashlib.sha256(pem.encode()).hexdigest()[:12]


@functools.lru_cache(maxsize=16)
def _load_private_key(pem: str) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(
            pem.encode(), password=None, unsafe_skip_rsa_key_validation=True
        )
    except (ValueError, TypeError, UnicodeError):
        raise AuthError(
            f"private key (sha256 {_fingerprint(pem)}) is not a readable unencrypted PEM key"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise AuthError(f"private key (sha256 {_fingerprint(pem)}) is not an RSA key; RS256 needs RSA")
    _self_test(key, pem)
    return key


def _self_test(key: rsa.RSAPrivateKey, pem: str) -> None:
    """Sign with ``key`` and verify with its public half (a damaged key signs what does not verify)."""
    try:
        signature = key.sign(_SELF_TEST_MESSAGE, padding.PKCS1v15(), hashes.SHA256())
        key.public_key().verify(signature, _SELF_TEST_MESSAGE, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError):
        raise AuthError(
            f"private key (sha256 {_fingerprint(pem)}) is damaged: its signatures do not verify against "
            "its own public key; provision the node again (`coda-bridge reset`, then start with a new token)"
        ) from None


@functools.lru_cache(maxsize=64)
def _load_public_key(pem: str) -> rsa.RSAPublicKey:
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError, UnicodeError):
        raise AuthError(f"public key (sha256 {_fingerprint(pem)}) is not a readable PEM key") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise AuthError(f"public key (sha256 {_fingerprint(pem)}) is not an RSA key")
    return key


class Signer:
    """Signs a fresh RS256 token per request for one node identity.

    The key is parsed on construction, so a garbled key fails early with
    an :class:`AuthError`, not in the middle of a job.  ``clock`` is the
    time tokens are signed on: the cloud's, as a :class:`~.clock.CloudClock`
    knows it, or this host's.
    """

    __slots__ = ("_clock", "_key", "_last", "key_id", "qpu_id")

    def __init__(
        self, private_key_pem: str, key_id: str, qpu_id: str, *, clock: Callable[[], float] = host_time
    ) -> None:
        if not key_id:
            raise AuthError("jwt_key_id is empty; the cloud needs it as the token's kid")
        if not qpu_id:
            raise AuthError("qpu_id is empty; the cloud needs it as the token's sub")
        self._key = _load_private_key(private_key_pem)
        self.key_id = key_id
        self.qpu_id = qpu_id
        self._last: tuple[int, str] = (-1, "")
        self._clock = clock

    def __repr__(self) -> str:
        return f"Signer(key_id={self.key_id!r}, qpu_id={self.qpu_id!r})"

    def sign(self, *, now: float | None = None) -> str:
        """A token with ``sub``, ``iss``, ``iat`` and ``exp`` = ``iat`` + 1 hour.

        RS256 (PKCS#1 v1.5) is deterministic and ``iat`` counts whole
        seconds, so every token signed within one second is the same bytes:
        the last one is reused instead of being signed again.
        """
        issued = int(self._clock() if now is None else now)
        last_issued, last_token = self._last
        if issued == last_issued:
            return last_token
        claims = {"sub": self.qpu_id, "iss": JWT_ISSUER, "iat": issued, "exp": issued + JWT_LIFETIME_SEC}
        token = jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.key_id})
        self._last = (issued, token)
        return token

    def authorization(self) -> dict[str, str]:
        """The ``Authorization`` header for one request."""
        return {"Authorization": f"Bearer {self.sign()}"}


def unverified_kid(token: str) -> str | None:
    """The ``kid`` of a token's header, without checking anything else."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise AuthError("bearer is not a well-formed JWT") from None
    kid = header.get("kid")
    return kid if isinstance(kid, str) else None


@functools.lru_cache(maxsize=1024)
def _checked_claims(token: str, public_pem: str, leeway_sec: float) -> dict[str, Any]:
    """The claims of a token that passed every check, cached: a node reuses its token within a second.

    Only ``exp`` can turn a checked token bad later: :func:`verify_token` looks at it on every call.
    """
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            _load_public_key(public_pem),
            algorithms=["RS256"],
            issuer=JWT_ISSUER,
            leeway=leeway_sec,
            options={"require": ["sub", "iss", "iat", "exp"]},
        )
    except jwt.ExpiredSignatureError:
        raise AuthError("token has expired") from None
    except jwt.ImmatureSignatureError:
        raise AuthError("token is not yet valid (iat)") from None
    except jwt.InvalidIssuerError:
        raise AuthError(f"token issuer is not {JWT_ISSUER!r}") from None
    except jwt.PyJWTError as exc:
        raise AuthError(f"token rejected: {type(exc).__name__}") from None
    return claims


def verify_token(
    token: str,
    public_pem: str,
    *,
    expected_kid: str | None = None,
    expected_sub: str | None = None,
    leeway_sec: float = 5,
) -> dict[str, Any]:
    """Check an RS256 token the way the cloud does; return its claims.

    Raises :class:`AuthError` with the reason (never the token) when the
    signature, ``kid``, ``iss``, ``sub`` or time claims are wrong.
    """
    kid = unverified_kid(token)
    if expected_kid is not None and kid != expected_kid:
        raise AuthError(f"token kid {kid!r} does not match the registered key {expected_kid!r}")
    claims = _checked_claims(token, public_pem, leeway_sec)
    if time.time() >= claims["exp"] + leeway_sec:
        raise AuthError("token has expired")
    if expected_sub is not None and claims.get("sub") != expected_sub:
        raise AuthError(f"token sub {claims.get('sub')!r} does not match {expected_sub!r}")
    return dict(claims)
