"""Redacting URLs before they are stored or printed: credentials and signatures stay in memory.

A source URL may carry a credential: `user:password@` or a presigned query string (S3
`X-Amz-Signature`, GCS `X-Goog-Signature`, Azure SAS `sig`, CloudFront `Signature`, Akamai
`hdnts`, a bare `token`...). Such a URL is sent to the API as it is, but the journal, the
reports, the summary, the logs and the terminal only ever see its redacted form, with the
credential replaced by `REDACTED`; a run resumed later reads the real URL from the manifest again.
"""

from __future__ import annotations

import hashlib
import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

REDACTED = "REDACTED"
# Query parameters that carry a credential, by name (case-insensitive).
_SECRET_PARAM = re.compile(
    r"^(x-amz-(signature|credential|security-token)|x-goog-(signature|credential)|signature|sig|"
    r"token|access_token|auth|authorization|key|api_key|apikey|password|passwd|secret|"
    r"key-pair-id|hdnts|hdnea|__token__|x-oss-signature|ossaccesskeyid)$",
    re.IGNORECASE,
)


def redact_url(url: str) -> str:
    """`url` with user:password@ and credential-like query values replaced by REDACTED.

    A URL that carries none is returned unchanged (same string)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rsplit('@', 1)[1]}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_SECRET_PARAM.match(k) for k, _ in pairs):
            query = urlencode([(k, REDACTED if _SECRET_PARAM.match(k) else v) for k, v in pairs], safe="/:")
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def digest(url: str) -> str:
    """A fingerprint of a URL that carries a credential (to recognise it again, never to recover it)."""
    return hashlib.sha256(url.encode("utf-8")).hexdigest()
