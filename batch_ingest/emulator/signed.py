"""When a signed (presigned) source URL stops working, read from its query string.

A store answers 403 to a signed URL once its signature has expired, so the platform, fetching the
source when the job leaves its queue, fails that encode. The forms known here, their parameters
matched case-insensitively:

    AWS S3 SigV4      X-Amz-Date (20261127T200452Z) + X-Amz-Expires (seconds, at most 7 days)
    Google Cloud V4   X-Goog-Date + X-Goog-Expires (the same forms)
    Azure SAS         se (ISO 8601: a date, or a time with a zone) beside sig
    AWS S3 SigV2      Expires (epoch seconds) beside Signature (CloudFront's canned policy too)

Stdlib only: the store imports this module, and the CLI imports the store to build its options.
"""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import parse_qsl, urlsplit

MAX_V4_EXPIRES_S = 7 * 24 * 3600  # S3 and GCS refuse a V4 signature valid for longer than a week


class SignatureInvalid(ValueError):
    """The URL is signed, but its expiry fields are malformed or out of range: a store refuses it
    whatever the time (the message names the field, never its value)."""


def _params(url: str) -> dict[str, str]:
    try:
        query = urlsplit(url).query
    except ValueError:
        return {}
    # The first value of each name, names lower-cased (a store reads them so).
    out: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        out.setdefault(key.lower(), value)
    return out


def _v4(params: dict[str, str], prefix: str, label: str) -> float | None:
    date, expires = params.get(f"{prefix}-date"), params.get(f"{prefix}-expires")
    if date is None or expires is None:
        return None
    try:
        signed = datetime.strptime(date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise SignatureInvalid(f"malformed {label}-Date") from None
    if not expires.isdigit():
        raise SignatureInvalid(f"malformed {label}-Expires")
    seconds = int(expires)
    if seconds > MAX_V4_EXPIRES_S:
        raise SignatureInvalid(f"{label}-Expires over {MAX_V4_EXPIRES_S} s (7 days)")
    return signed.timestamp() + seconds


def _azure(value: str) -> float:
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise SignatureInvalid("malformed SAS expiry (se)") from None
    if when.tzinfo is None:  # a bare date, or a time without a zone: UTC, as Azure reads it
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def signed_url_expiry(url: str) -> float | None:
    """The epoch time at which the signature of `url` expires; None when `url` carries no signature
    with an expiry. Raises SignatureInvalid when it does, malformed (a store refuses that at once).
    When several forms are present, the earliest expiry wins."""
    params = _params(url)
    if not params:
        return None
    found = [
        when for when in (_v4(params, "x-amz", "X-Amz"), _v4(params, "x-goog", "X-Goog")) if when is not None
    ]
    if "se" in params and "sig" in params:
        found.append(_azure(params["se"]))
    if "expires" in params and "signature" in params:
        if not params["expires"].isdigit():
            raise SignatureInvalid("malformed Expires")
        found.append(float(params["expires"]))
    return min(found) if found else None
