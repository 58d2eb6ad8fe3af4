"""Standard Webhooks signatures: sign and verify `v1,<base64 HMAC-SHA256>` over `id.ts.body`.

The scheme of https://www.standardwebhooks.com (and of the official `standardwebhooks`
package): secrets are `whsec_<base64>`, the signed content is `{webhook-id}.{webhook-timestamp}.`
followed by the raw body bytes, and `webhook-signature` holds space-separated `version,signature`
pairs so a sender can sign with an old and a new secret while they rotate.

Verification works on the raw bytes and never trusts a header's shape: anything missing,
oversized, not base64 or not an integer is a `SignatureError` (a 401), never an exception
from deep inside. Secrets never reach a repr, a log line or an error message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from upak.config import parse_webhook_secrets

SIGNATURE_VERSION = "v1"

# Bounds on what a sender may put in the headers: far above any real delivery, low enough
# that a hostile header costs us nothing (one HMAC per secret, a few dozen comparisons).
MAX_ID_LENGTH = 256
MAX_SIGNATURE_HEADER = 4096
MAX_SIGNATURES = 32
_TIMESTAMP_DIGITS = 12  # seconds since the epoch until the year 33658


class SignatureError(Exception):
    """The delivery is not authentic or not fresh. The message says which check failed."""


@dataclass(frozen=True)
class SignedDelivery:
    """What a verified delivery's headers say: its id (the idempotency key) and timestamp."""

    id: str
    timestamp: int


class SigningKeys:
    """The decoded WEBHOOK_SECRET values: several while a secret rotates; any one verifies."""

    def __init__(self, secrets: Sequence[bytes]) -> None:
        if not secrets:
            raise ValueError("at least one secret is needed")
        self._macs = tuple(hmac.new(secret, digestmod=hashlib.sha256) for secret in secrets)

    @classmethod
    def from_setting(cls, value: str) -> SigningKeys:
        """From WEBHOOK_SECRET's text (for tools and tests; the service takes the keys its
        settings parsed, `Settings.webhook_keys`)."""
        return cls(parse_webhook_secrets(value))

    def __len__(self) -> int:
        return len(self._macs)

    def __repr__(self) -> str:
        return f"SigningKeys(<{len(self._macs)} secret(s) hidden>)"

    def digests(self, content: bytes) -> list[bytes]:
        """HMAC-SHA256 of `content` under every secret (copies of precomputed key states)."""
        out = []
        for mac in self._macs:
            each = mac.copy()
            each.update(content)
            out.append(each.digest())
        return out

    def sign(self, msg_id: str, timestamp: int, body: bytes) -> str:
        """The `webhook-signature` value for a delivery: one `v1,` signature per secret."""
        content = signed_content(msg_id, str(timestamp), body)
        return " ".join(
            f"{SIGNATURE_VERSION},{base64.b64encode(d).decode()}" for d in self.digests(content)
        )


def signed_content(msg_id: str, timestamp: str, body: bytes) -> bytes:
    return msg_id.encode() + b"." + timestamp.encode() + b"." + body


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if value is None or not value.strip():
        raise SignatureError(f"the {name} header is missing")
    return value.strip()


def _parse_timestamp(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > _TIMESTAMP_DIGITS:
        raise SignatureError("webhook-timestamp is not a whole number of seconds since the epoch")
    return int(text)


def _candidate_signatures(header: str) -> list[bytes]:
    if len(header) > MAX_SIGNATURE_HEADER:
        raise SignatureError("webhook-signature is too long")
    found = []
    for item in header.split()[:MAX_SIGNATURES]:
        version, comma, encoded = item.partition(",")
        if not comma or version != SIGNATURE_VERSION:
            continue  # other schemes (v1a) or junk: not ours to judge, look at the next one
        try:
            found.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            continue
    return found


def verify(
    keys: SigningKeys,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    tolerance: int,
) -> SignedDelivery:
    """Check a delivery's headers against its raw body. Raises SignatureError on any fault.

    The timestamp must lie within `tolerance` seconds of `now` in either direction: a captured
    delivery can be replayed only inside that window, which the replay gate covers.
    """
    msg_id = _header(headers, "webhook-id")
    timestamp_text = _header(headers, "webhook-timestamp")
    signature_header = _header(headers, "webhook-signature")
    if len(msg_id) > MAX_ID_LENGTH or not msg_id.isascii() or not msg_id.isprintable():
        raise SignatureError("webhook-id must be at most 256 printable ASCII characters")
    timestamp = _parse_timestamp(timestamp_text)
    if abs(now - timestamp) > tolerance:
        raise SignatureError(
            f"webhook-timestamp is more than {tolerance} seconds away from the server's clock"
        )
    candidates = _candidate_signatures(signature_header)
    if not candidates:
        raise SignatureError("webhook-signature holds no v1 signature")
    expected = keys.digests(signed_content(msg_id, timestamp_text, body))
    # Compare every pair in constant time, without stopping early on a match.
    matched = False
    for digest in expected:
        for candidate in candidates:
            matched |= hmac.compare_digest(digest, candidate)
    if not matched:
        raise SignatureError("no webhook-signature matches the body under any configured secret")
    return SignedDelivery(id=msg_id, timestamp=timestamp)
