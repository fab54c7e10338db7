"""Redacting URLs before they are stored or printed: credentials and signatures stay in memory.

A source URL may carry a credential: `user:password@` or a presigned query string (S3
`X-Amz-Signature`, GCS `X-Goog-Signature`, Azure SAS `sig`, CloudFront `Signature`, Akamai
`hdnts`, a bare `token`...). Such a URL is sent to the API as it is, but the journal, the
reports, the summary, the logs and the terminal only ever see its redacted form, with the
credential replaced by `REDACTED`; a run resumed later reads the real URL from the manifest again
(the row whose redacted form matches). No digest of the secret is stored either.
"""

from __future__ import annotations

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


_URL_IN_TEXT = re.compile(r"https?://[^\s\"'<>]+", re.IGNORECASE)


def redact_text(text: str) -> str:
    """`text` (a server's error message, say) with every URL in it redacted."""
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group()), text) if "://" in text else text
