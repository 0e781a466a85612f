"""Tokens: what the bootstrap endpoint hands the widget after checking the Moodle cookie.

A token is signed with itsdangerous (secret from the settings, one salt per purpose) and carries
the user id and a hash of the Moodle sid: never the sid itself, because tokens travel in WebSocket
URLs and page scripts. Identity always comes from a token or the cookie, never from a field a
client sends.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from gchat.errors import AuthError

TOKEN_SALT = "gchat.token.v1"


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: int
    sid_hash: str


class TokenSigner:
    def __init__(self, secret: str, ttl: int) -> None:
        self.ttl = ttl
        self._serializer = URLSafeTimedSerializer(secret, salt=TOKEN_SALT)
        # A long-poll tab presents the same token on every poll and send: remember the tokens
        # already verified until they expire, so each costs one HMAC, not one per request.
        self._verified: dict[str, tuple[Identity, float]] = {}

    def issue(self, identity: Identity) -> str:
        return self._serializer.dumps({"u": identity.user_id, "s": identity.sid_hash})

    def verify(self, token: str | None, *, remember: bool = True) -> Identity:
        """The token's identity. ``remember=False``: a token presented once (a WebSocket's) is not
        kept among the verified ones, where it would cost memory for the life of the token."""
        if not token or not isinstance(token, str) or len(token) > 512:
            raise AuthError("bad_token", "a token from api/bootstrap is required")
        hit = self._verified.get(token)
        if hit is not None and hit[1] > time.time():
            return hit[0]
        try:
            data, signed_at = self._serializer.loads(token, max_age=self.ttl, return_timestamp=True)
        except SignatureExpired:
            raise AuthError("token_expired", "the token has expired; call api/bootstrap again") from None
        except BadSignature:
            raise AuthError("bad_token", "the token is not valid") from None
        try:
            identity = Identity(int(data["u"]), str(data["s"]))
        except (KeyError, TypeError, ValueError):
            raise AuthError("bad_token", "the token is not valid") from None
        if not remember:
            return identity
        if len(self._verified) >= 100_000:
            now = time.time()
            self._verified = {t: v for t, v in self._verified.items() if v[1] > now}
            if len(self._verified) >= 100_000:
                self._verified.clear()
        self._verified[token] = (identity, signed_at.timestamp() + self.ttl)
        return identity


def load_or_create_secret(data_dir: str) -> str:
    """The signing key kept in ``data_dir/secret_key`` (created once, readable by its owner only)."""
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, "secret_key")
    try:
        with open(path, encoding="ascii") as handle:
            secret = handle.read().strip()
        if secret:
            return secret
    except FileNotFoundError:
        pass
    secret = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(secret + "\n")
    return secret
