"""Bearer authentication: static API keys and JWTs.

API keys are read from a file (one per line, `#` comments allowed) and kept only as
SHA-256 digests; a presented key is hashed and compared with every digest in constant
time. JWTs are verified with one pinned algorithm; `exp` is required, and `aud`/`iss`
when configured.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass
from pathlib import Path

import jwt

log = logging.getLogger("llmserve.auth")


class AuthError(Exception):
    """Authentication failed; the message is safe to return to the client."""


@dataclass(frozen=True)
class Principal:
    """Who made the request; `key` identifies the rate-limit bucket."""

    key: str
    kind: str  # "api_key" | "jwt" | "anonymous"


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8")).digest()


def load_key_digests(path: str) -> list[bytes]:
    digests = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        key = line.strip()
        if key and not key.startswith("#"):
            digests.append(_digest(key))
    return digests


class Authenticator:
    def __init__(
        self,
        api_keys_file: str = "",
        jwt_secret_file: str = "",
        jwt_public_key_file: str = "",
        jwt_algorithm: str = "",
        jwt_audience: str = "",
        jwt_issuer: str = "",
    ) -> None:
        self.api_keys_file = api_keys_file
        self._digests: list[bytes] = []
        self._jwt_key: str | bytes | None = None
        if jwt_secret_file and jwt_public_key_file:
            raise ValueError("give either a JWT secret file or a JWT public key file, not both")
        if jwt_secret_file:
            self._jwt_key = Path(jwt_secret_file).read_bytes().strip()
            self.jwt_algorithm = jwt_algorithm or "HS256"
            if not self.jwt_algorithm.startswith("HS"):
                raise ValueError("a JWT secret needs an HS* algorithm")
        elif jwt_public_key_file:
            self._jwt_key = Path(jwt_public_key_file).read_bytes()
            self.jwt_algorithm = jwt_algorithm or "RS256"
            if self.jwt_algorithm.startswith("HS") or self.jwt_algorithm == "none":
                raise ValueError("a JWT public key needs an asymmetric algorithm (RS*, ES*, PS*)")
        else:
            self.jwt_algorithm = ""
        self.jwt_audience = jwt_audience or None
        self.jwt_issuer = jwt_issuer or None
        self.reload()

    def reload(self) -> int:
        """(Re)read the API keys file; returns the number of keys."""
        if self.api_keys_file:
            self._digests = load_key_digests(self.api_keys_file)
            if not self._digests:
                log.warning("API keys file %s holds no keys", self.api_keys_file)
        return len(self._digests)

    @property
    def enabled(self) -> bool:
        return bool(self.api_keys_file) or self._jwt_key is not None

    def _match_key(self, token: str) -> bytes | None:
        candidate = _digest(token)
        found: bytes | None = None
        for digest in self._digests:  # no early exit: constant time in the matched index
            if hmac.compare_digest(digest, candidate):
                found = digest
        return found

    def authenticate(self, authorization: str | None, client: str = "") -> Principal:
        if not self.enabled:
            return Principal(key=f"ip:{client}", kind="anonymous")
        if not authorization:
            raise AuthError("Missing bearer token: send 'Authorization: Bearer <key>'.")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthError("Malformed Authorization header: expected 'Bearer <key>'.")
        digest = self._match_key(token)
        if digest is not None:
            return Principal(key="key:" + digest.hex()[:16], kind="api_key")
        if self._jwt_key is not None and token.count(".") == 2:
            options = {"require": ["exp"] + (["aud"] if self.jwt_audience else [])}
            if self.jwt_issuer:
                options["require"].append("iss")
            try:
                claims = jwt.decode(
                    token,
                    self._jwt_key,
                    algorithms=[self.jwt_algorithm],
                    audience=self.jwt_audience,
                    issuer=self.jwt_issuer,
                    options=options,
                    leeway=5,
                )
            except jwt.ExpiredSignatureError as exc:
                raise AuthError("Token has expired.") from exc
            except jwt.PyJWTError as exc:
                raise AuthError(f"Invalid token: {exc}.") from exc
            subject = str(claims.get("sub") or hashlib.sha256(token.encode()).hexdigest()[:16])
            return Principal(key="jwt:" + subject, kind="jwt")
        raise AuthError("Incorrect API key provided.")
