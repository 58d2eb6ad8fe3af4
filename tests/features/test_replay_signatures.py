"""Standard Webhooks signatures: the spec's test vector, and agreement with the official package."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.conftest import make_settings
from tests.support.webhooks import OLD_SECRET, SECRET, notification, signed_headers
from upak.config import ConfigError, parse_webhook_secrets
from upak.features.signatures import SignatureError, SigningKeys, verify

# The published test vector of the Standard Webhooks libraries (standard-webhooks/standard-
# webhooks, libraries/*/tests: "test_sign_function"), the same in every language.
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

NOW = time.time()


def keys(*secrets: str) -> SigningKeys:
    return SigningKeys.from_setting(",".join(secrets))


def test_signs_the_published_test_vector() -> None:
    assert keys(VECTOR_SECRET).sign(VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE


def test_verifies_the_published_test_vector() -> None:
    headers = {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": str(VECTOR_TIMESTAMP),
        "webhook-signature": VECTOR_SIGNATURE,
    }
    delivery = verify(
        keys(VECTOR_SECRET), headers, VECTOR_BODY, now=VECTOR_TIMESTAMP + 10, tolerance=300
    )
    assert (delivery.id, delivery.timestamp) == (VECTOR_ID, VECTOR_TIMESTAMP)
    # The secret without its prefix is the same key.
    verify(keys(VECTOR_SECRET.removeprefix("whsec_")), headers, VECTOR_BODY, now=VECTOR_TIMESTAMP,
           tolerance=300)  # fmt: skip


def test_accepts_what_the_official_package_signs() -> None:
    body = notification()
    headers = signed_headers(body, at=NOW)
    assert verify(keys(SECRET), headers, body, now=NOW, tolerance=300).id == headers["webhook-id"]


def test_the_official_package_accepts_our_signatures() -> None:
    body = notification()
    ts = int(NOW)
    signature = keys(SECRET).sign("msg_ours", ts, body)
    headers = {"webhook-id": "msg_ours", "webhook-timestamp": str(ts)}
    headers["webhook-signature"] = signature
    assert Webhook(SECRET).verify(body, headers)["event"] == "payment.succeeded"
    with pytest.raises(WebhookVerificationError):
        Webhook(OLD_SECRET).verify(body, headers)


def test_rotating_secrets_any_configured_one_verifies() -> None:
    body = notification()
    signed_by_old = signed_headers(body, at=NOW, secrets=(OLD_SECRET,))
    signed_by_both = signed_headers(body, at=NOW, secrets=(OLD_SECRET, SECRET))
    rotating = keys(SECRET, OLD_SECRET)
    assert verify(rotating, signed_by_old, body, now=NOW, tolerance=300)
    assert verify(keys(SECRET), signed_by_both, body, now=NOW, tolerance=300)
    with pytest.raises(SignatureError, match="no webhook-signature matches"):
        verify(keys(SECRET), signed_by_old, body, now=NOW, tolerance=300)
    # Our signer emits one signature per secret; the package finds its own among them.
    both = rotating.sign("msg_r", int(NOW), body)
    assert len(both.split()) == 2
    Webhook(OLD_SECRET).verify(
        body, {"webhook-id": "msg_r", "webhook-timestamp": str(int(NOW)), "webhook-signature": both}
    )


def test_other_schemes_and_junk_entries_are_skipped() -> None:
    body = notification()
    headers = signed_headers(body, at=NOW)
    headers["webhook-signature"] = (
        "v1a,hnO3f9T8Ytu9HwrXslvumlUpqtNVqkhqw/enGzPCXe5BdqzCInXqYXFymVJaA7AZdpXwVLPo3mNl8EM"
        "+m7TBAg== "
        "v2,abc nocomma v1,!!!notbase64 v1, " + headers["webhook-signature"]
    )
    assert verify(keys(SECRET), headers, body, now=NOW, tolerance=300)


@pytest.mark.parametrize("offset", [-301, 301, -10_000, 10_000])
def test_timestamps_outside_the_tolerance_are_refused_both_ways(offset: int) -> None:
    body = notification()
    headers = signed_headers(body, at=NOW + offset)
    with pytest.raises(SignatureError, match="seconds away"):
        verify(keys(SECRET), headers, body, now=NOW, tolerance=300)


@pytest.mark.parametrize("offset", [-300, 300])
def test_timestamps_at_the_tolerance_edge_are_accepted(offset: int) -> None:
    body = notification()
    now = float(int(NOW))
    assert verify(keys(SECRET), signed_headers(body, at=now + offset), body, now=now, tolerance=300)


def test_a_changed_body_id_or_timestamp_fails() -> None:
    body = notification()
    headers = signed_headers(body, at=NOW)
    with pytest.raises(SignatureError):
        verify(keys(SECRET), headers, body + b" ", now=NOW, tolerance=300)
    with pytest.raises(SignatureError):
        verify(keys(SECRET), {**headers, "webhook-id": "msg_other"}, body, now=NOW, tolerance=300)
    later = {**headers, "webhook-timestamp": str(int(NOW) + 1)}
    with pytest.raises(SignatureError):
        verify(keys(SECRET), later, body, now=NOW, tolerance=300)


MALFORMED = [
    ("webhook-signature", ""),
    ("webhook-signature", "   "),
    ("webhook-signature", "v1"),
    ("webhook-signature", "v1,"),
    ("webhook-signature", "v1,@@@@"),
    ("webhook-signature", "v1," + base64.b64encode(b"x" * 32).decode()),
    ("webhook-signature", "v1,AAAA " * 2000),
    ("webhook-signature", "x" * 100_000),
    ("webhook-timestamp", ""),
    ("webhook-timestamp", "abc"),
    ("webhook-timestamp", "1.5e9"),
    ("webhook-timestamp", "-1"),
    ("webhook-timestamp", "\uff11\uff12\uff13"),  # fullwidth digits: isdigit() but not ASCII
    ("webhook-timestamp", "9" * 40),
    ("webhook-id", ""),
    ("webhook-id", "x" * 257),
    ("webhook-id", "msg\x00id"),
    ("webhook-id", "msg_ünïcode"),
]


@pytest.mark.parametrize(("name", "value"), MALFORMED)
def test_malformed_headers_are_a_signature_error(name: str, value: str) -> None:
    body = notification()
    headers = {**signed_headers(body, at=NOW), name: value}
    with pytest.raises(SignatureError):
        verify(keys(SECRET), headers, body, now=NOW, tolerance=300)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_headers_are_a_signature_error(missing: str) -> None:
    body = notification()
    headers = signed_headers(body, at=NOW)
    del headers[missing]
    with pytest.raises(SignatureError, match=missing):
        verify(keys(SECRET), headers, body, now=NOW, tolerance=300)


def test_non_utf8_bodies_verify_on_the_raw_bytes() -> None:
    body = b"\xff\xfe not utf-8"
    ts = int(NOW)
    headers = {
        "webhook-id": "msg_b",
        "webhook-timestamp": str(ts),
        "webhook-signature": keys(SECRET).sign("msg_b", ts, body),
    }
    assert verify(keys(SECRET), headers, body, now=NOW, tolerance=300)


def test_webhook_secret_setting_is_validated_without_echoing_it() -> None:
    assert len(parse_webhook_secrets(f"{SECRET}, {OLD_SECRET}")) == 2
    with pytest.raises(ConfigError) as caught:
        make_settings(webhook_secret=f"{SECRET},whsec_not*base64*topsecret")
    message = str(caught.value)
    assert "WEBHOOK_SECRET" in message and "secret #2" in message
    assert "topsecret" not in message and SECRET not in message


def test_the_settings_hold_the_secrets_decoded_once() -> None:
    settings = make_settings(webhook_secret=f"{SECRET}, {OLD_SECRET}")
    assert settings.webhook_keys == tuple(parse_webhook_secrets(f"{SECRET},{OLD_SECRET}"))
    assert make_settings(webhook_secret="").webhook_keys == ()
    # What the service builds its verifier from: the settings' keys, not the text again.
    body = notification()
    headers = signed_headers(body, at=NOW, secrets=(OLD_SECRET,))
    assert verify(SigningKeys(settings.webhook_keys), headers, body, now=NOW, tolerance=300)


def test_keys_never_show_in_reprs() -> None:
    rendered = repr(keys(SECRET)) + repr(make_settings(webhook_secret=SECRET))
    assert SECRET not in rendered
    assert SECRET.removeprefix("whsec_") not in rendered


def test_the_official_package_signs_the_same_vector() -> None:
    # The package floors the timestamp it signs; a whole-second timestamp is what it sends.
    moment = datetime.fromtimestamp(VECTOR_TIMESTAMP, UTC)
    theirs = Webhook(VECTOR_SECRET).sign(VECTOR_ID, moment, VECTOR_BODY.decode())
    assert theirs == VECTOR_SIGNATURE
