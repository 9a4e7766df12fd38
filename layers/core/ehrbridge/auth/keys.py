"""Signing keys for client assertions: generate, load (RSA or EC PEM), and publish as JWKS.

Keys are joserfc key objects, chosen by the tenant's algorithm, never handed to authlib as PEM
strings (authlib imports any non-key as RSA, so an EC PEM fails: research/smart-fhir.md §5).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

# joserfc (and cryptography under it) load only when a key is made, read or used: a function whose
# token is cached never signs, and the two are about a third of the poller's cold-start imports.
if TYPE_CHECKING:
    from joserfc.jwk import ECKey, RSAKey

    SigningKey = RSAKey | ECKey
else:
    SigningKey = Any  # the union above, without importing joserfc

Algorithm = Literal["RS384", "ES384"]
SUPPORTED_ALGORITHMS: tuple[Algorithm, ...] = ("RS384", "ES384")
MIN_RSA_BITS = 2048


class KeyMaterialError(ValueError):
    """A key does not fit its algorithm or cannot be read. Text never includes key material."""


def generate_private_key(algorithm: Algorithm, rsa_bits: int = 3072) -> str:
    """A new private key as PKCS#8 PEM text."""
    from joserfc.jwk import ECKey, RSAKey

    if algorithm == "RS384":
        if rsa_bits < MIN_RSA_BITS:
            raise KeyMaterialError(f"RSA keys need at least {MIN_RSA_BITS} bits")
        key: SigningKey = RSAKey.generate_key(rsa_bits, private=True, auto_kid=False)
    elif algorithm == "ES384":
        key = ECKey.generate_key("P-384", private=True, auto_kid=False)
    else:
        raise KeyMaterialError(f"unsupported algorithm {algorithm!r}; use one of {SUPPORTED_ALGORITHMS}")
    return key.as_pem(private=True).decode("ascii")


def load_private_key(pem: str | bytes, algorithm: str) -> SigningKey:
    """PEM -> joserfc key of the type the algorithm needs (RS384: RSA >= 2048, ES384: EC P-384)."""
    from joserfc.jwk import ECKey, RSAKey

    data = pem.encode("ascii") if isinstance(pem, str) else pem
    try:
        if algorithm == "RS384":
            rsa = RSAKey.import_key(data)
            bits = _rsa_bits(rsa)
            if bits < MIN_RSA_BITS:
                raise KeyMaterialError(f"RSA key has {bits} bits; at least {MIN_RSA_BITS} needed")
            key: SigningKey = rsa
        elif algorithm == "ES384":
            key = ECKey.import_key(data)
            if key.curve_name != "P-384":
                raise KeyMaterialError(f"ES384 needs a P-384 key, got {key.curve_name}")
        else:
            raise KeyMaterialError(f"unsupported algorithm {algorithm!r}; use one of {SUPPORTED_ALGORITHMS}")
    except KeyMaterialError:
        raise
    except Exception as err:  # joserfc raises several types; none may echo the PEM
        raise KeyMaterialError(f"private key is not a valid {_kind(algorithm)} PEM ({type(err).__name__})") from None
    if not key.is_private:
        raise KeyMaterialError("a private key is needed to sign assertions, got a public key")
    return key


def algorithm_for(key: SigningKey) -> Algorithm:
    from joserfc.jwk import RSAKey

    return "RS384" if isinstance(key, RSAKey) else "ES384"


def thumbprint_kid(key: SigningKey) -> str:
    """RFC 7638 thumbprint: a stable kid derived from the public key."""
    return key.thumbprint()


def public_jwk(key: SigningKey, kid: str, algorithm: str | None = None) -> dict[str, Any]:
    """The public half as a JWK with kid, alg and use (some servers reject entries without alg)."""
    jwk = key.as_dict(private=False)
    jwk.update({"kid": kid, "alg": algorithm or algorithm_for(key), "use": "sig", "key_ops": ["verify"]})
    return jwk


def public_jwk_from_pem(pem: str | bytes, algorithm: str, kid: str) -> dict[str, Any]:
    return public_jwk(load_private_key(pem, algorithm), kid, algorithm)


def jwks(entries: list[dict[str, Any]]) -> dict[str, Any]:
    kids = [e["kid"] for e in entries]
    if len(kids) != len(set(kids)):
        raise KeyMaterialError("duplicate kid in JWKS: each kid must be unique within the client's key set")
    return {"keys": entries}


def _rsa_bits(key: RSAKey) -> int:
    from joserfc.util import urlsafe_b64decode

    modulus = urlsafe_b64decode(key.as_dict(private=False)["n"].encode("ascii"))
    return len(modulus.lstrip(b"\0")) * 8


def _kind(algorithm: str) -> str:
    return {"RS384": "RSA", "ES384": "EC P-384"}.get(algorithm, algorithm)
