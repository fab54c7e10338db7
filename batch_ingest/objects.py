"""Object-storage sources: `s3://bucket/key`, `gs://bucket/key` and `az://container/blob`.

The manifest, the plan, the journal, the report and the logs only ever hold the `s3://` form. At
submit time, for each attempt, a GET URL is signed in memory (`--presign-ttl`, capped at the 7 days
that S3's and GCS's V4 signatures allow) and sent as the job's `source_url`; a resume or a retry signs
again. A signed URL is a credential: it is never written anywhere (the API's echo of it is compared
without its query and never stored).

One library signs all three stores: obstore (the Rust `object_store` crate), which reads each cloud's
standard credential chain: for S3 the `AWS_*` environment variables (keys, `AWS_REGION`,
`AWS_ENDPOINT_URL` for MinIO, Ceph, Wasabi or R2), web identity, container and instance credentials;
for GCS `GOOGLE_APPLICATION_CREDENTIALS` or `GOOGLE_SERVICE_ACCOUNT`; for Azure `AZURE_STORAGE_*`.
obstore does not read the AWS shared files, so `~/.aws/credentials` and `~/.aws/config` (profile
`AWS_PROFILE`, else `default`) are read here for static keys and the region when the environment
gives none.

`--check-sources` asks the store itself whether each object exists and how large it is (a HEAD
through its API, not through a signed URL).
"""

from __future__ import annotations

import asyncio
import configparser
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit, urlunsplit

if TYPE_CHECKING:
    from obstore.store import AzureStore, GCSStore, S3Store

    Store = S3Store | GCSStore | AzureStore

SCHEMES = ("s3", "gs", "az")
MAX_PRESIGN_TTL_S = 7 * 24 * 3600  # SigV4 (S3) and GCS V4 signatures last at most 7 days
DEFAULT_PRESIGN_TTL_S = 24 * 3600  # long enough for a platform queue; a retry signs again

_OBJECT_URL = re.compile(r"^(?P<scheme>[A-Za-z0-9]+)://(?P<bucket>[^/?#]*)/?(?P<key>.*)$")
_S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_GCS_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._\-]{1,220}[a-z0-9]$")
_AZ_CONTAINER = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}$")
_IP_ADDRESS = re.compile(r"^\d+\.\d+\.\d+\.\d+$")
MAX_KEY_BYTES = 1024
# obstore's defaults retry for 3 minutes: a store (or a credential endpoint) that does not answer
# would hold each row that long. Ten seconds a request, two retries: about 20 s at most.
CLIENT_OPTIONS: Any = {"timeout": "10s", "connect_timeout": "5s"}
MEMO_S = 60.0  # how long a bucket's failure to sign or to answer is taken as the answer for its rows
RETRY_CONFIG: Any = {"max_retries": 2, "retry_timeout": timedelta(seconds=15)}


@dataclass(frozen=True)
class ObjectRef:
    scheme: str  # s3, gs or az
    bucket: str  # the bucket, or Azure's container
    key: str

    def __str__(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.key}"


def parse_object_url(source: str) -> ObjectRef:
    """The bucket and key of an object URL; ValueError with a reason that names the fix."""
    match = _OBJECT_URL.match(source)
    if match is None:
        raise ValueError(
            f"malformed object URL {source!r}: use s3://bucket/key, gs://bucket/key or az://container/blob"
        )
    scheme, bucket, key = match["scheme"].lower(), match["bucket"], match["key"]
    if not bucket:
        raise ValueError(f"no bucket in {source!r}: use {scheme}://bucket/key")
    if scheme == "s3" and (not _S3_BUCKET.match(bucket) or ".." in bucket or _IP_ADDRESS.match(bucket)):
        raise ValueError(
            f"{bucket!r} is not a valid S3 bucket name (3 to 63 lower-case letters, digits, dots and "
            "hyphens, starting and ending with a letter or digit): check the bucket"
        )
    if scheme == "gs" and (not _GCS_BUCKET.match(bucket) or ".." in bucket):
        raise ValueError(
            f"{bucket!r} is not a valid GCS bucket name (lower-case letters, digits, dots, hyphens and "
            "underscores, starting and ending with a letter or digit): check the bucket"
        )
    if scheme == "az" and not _AZ_CONTAINER.match(bucket):
        raise ValueError(
            f"{bucket!r} is not a valid Azure container name (3 to 63 lower-case letters, digits and "
            "single hyphens): check the container"
        )
    if not key:
        raise ValueError(f"no object key in {source!r}: use {scheme}://{bucket}/path/to/video.mp4")
    if key.endswith("/"):
        raise ValueError(f"{source!r} names a folder (it ends with /), not an object: give the video's key")
    if len(key.encode()) > MAX_KEY_BYTES:
        raise ValueError(
            f"the object key is over {MAX_KEY_BYTES} bytes, longer than any store allows: check the row"
        )
    if key.startswith("/") or any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(
            f"the key {key!r} has an empty, '.' or '..' segment, which the signer cannot address: "
            "rename the object (or copy it to a plain key) and give that key"
        )
    if "?versionId=" in key:
        raise ValueError(
            f"{source!r} names an object version, which batch-ingest cannot sign: copy that version to a "
            "key of its own and give that key (a `?` in a key is otherwise part of the key)"
        )
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        raise ValueError("the key holds a control character: rename the object and give the new key")
    # `?` and `#` are part of the key, as `aws s3` reads them: batch-ingest signs the URL itself.
    return ObjectRef(scheme, bucket, key)


def object_problem(source: str) -> str | None:
    """What is wrong with an object URL's syntax, or None."""
    try:
        parse_object_url(source)
    except ValueError as exc:
        return str(exc)
    return None


def without_query(url: str) -> str:
    """A signed URL as the object's plain address (what a job's echoed `source_url` is compared by)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def scrub_signed(text: str, signed: str) -> str:
    """`text` (an API error message) without any piece of a URL signed here: each query value of it
    (signature, credential with the access key id, date), as written, percent-encoded or HTML-escaped."""
    from urllib.parse import parse_qsl, quote

    for _, value in parse_qsl(urlsplit(signed).query):
        if len(value) < 8:
            continue
        for form in {value, quote(value, safe=""), quote(value, safe="/"), value.replace("/", "%2F")}:
            text = text.replace(form, "REDACTED")
        access_key = value.split("/", 1)[0]
        if len(access_key) >= 12:
            text = text.replace(access_key, "REDACTED")
    return text


def names_object(url: str, source: str, address: str | None = None) -> bool:
    """Whether a signed URL (the platform's echo of one) is of the object `source`, by its path: the
    host is left out, so that a resume through another spelling of the endpoint or region still
    finds the job (a row must never be sent twice).

    With `address` (the object's unsigned URL as this process's store spells it), the path must be
    the address's, whatever comes before `/bucket/key` there (Azurite's account segment, a gateway's
    `/s3`); without it (the store cannot sign here), `/bucket/key` or, virtual-hosted, `bucket.host`
    with `/key`."""
    ref = parse_object_url(source)
    parts = urlsplit(url)
    path = unquote(parts.path)
    virtual = parts.netloc.lower().startswith(ref.bucket + ".") and path == f"/{ref.key}"
    if address is None:
        return path == f"/{ref.bucket}/{ref.key}" or virtual
    own = urlsplit(address)
    own_path = unquote(own.path)
    if own_path == f"/{ref.key}" and own.netloc.lower().startswith(ref.bucket + "."):
        return virtual
    return path == own_path


def _aws_shared_files() -> dict[str, str]:
    """Static keys and the region of the AWS profile (`AWS_PROFILE`, else `default`) from the shared
    credentials and config files, for what the environment does not set (obstore reads no files)."""
    profile = os.environ.get("AWS_PROFILE") or os.environ.get("AWS_DEFAULT_PROFILE") or "default"
    home = Path.home() / ".aws"
    found: dict[str, str] = {}
    creds_file = Path(os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or home / "credentials")
    config_file = Path(os.environ.get("AWS_CONFIG_FILE") or home / "config")
    for path, section in (
        (creds_file, profile),
        (config_file, "default" if profile == "default" else f"profile {profile}"),
    ):
        parser = configparser.RawConfigParser()
        try:
            parser.read(path)
        except (OSError, configparser.Error):
            continue
        if parser.has_section(section):
            for key in ("aws_access_key_id", "aws_secret_access_key", "aws_session_token", "region"):
                if parser.has_option(section, key) and key not in found:
                    found[key] = parser.get(section, key).strip()
    return found


class ObjectStores:
    """The stores a run's object sources live in (one per bucket, made once), and what is done with them."""

    def __init__(
        self, *, presign_ttl_s: float = DEFAULT_PRESIGN_TTL_S, s3_endpoint: str | None = None
    ) -> None:
        self.presign_ttl = timedelta(seconds=min(float(presign_ttl_s), MAX_PRESIGN_TTL_S))
        self.s3_endpoint = (
            s3_endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
        )
        self._stores: dict[tuple[str, str], Any] = {}
        # (scheme, bucket) -> (until when, why) signing failed there, or the store could not be reached:
        # the bucket's later rows are told at once for MEMO_S, not after a timeout each.
        self._sign_failures: dict[tuple[str, str], tuple[float, str]] = {}
        self._head_failures: dict[tuple[str, str], tuple[float, str]] = {}
        self._addresses: dict[str, str] = {}  # object URL -> its signed URL without the query

    def store(self, ref: ObjectRef) -> Store:
        cached = self._stores.get((ref.scheme, ref.bucket))
        if cached is not None:
            return cached
        from obstore.store import AzureStore, GCSStore, S3Store

        store: Store
        if ref.scheme == "s3":
            config: dict[str, Any] = {}
            if not os.environ.get("AWS_ACCESS_KEY_ID") or not (
                os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
            ):
                shared = _aws_shared_files()
                if not os.environ.get("AWS_ACCESS_KEY_ID") and "aws_access_key_id" in shared:
                    config["access_key_id"] = shared["aws_access_key_id"]
                    config["secret_access_key"] = shared.get("aws_secret_access_key", "")
                    if "aws_session_token" in shared:
                        config["session_token"] = shared["aws_session_token"]
                if (
                    not (os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"))
                    and "region" in shared
                ):
                    config["region"] = shared["region"]
            if self.s3_endpoint:
                config["endpoint"] = self.s3_endpoint
                config["allow_http"] = self.s3_endpoint.lower().startswith("http://")
                # S3-compatible stores (MinIO, Ceph) address buckets by path unless told otherwise.
                config.setdefault(
                    "virtual_hosted_style_request",
                    os.environ.get("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "").lower() in ("1", "true"),
                )
            store = S3Store(ref.bucket, **config, client_options=CLIENT_OPTIONS, retry_config=RETRY_CONFIG)
        elif ref.scheme == "gs":
            store = GCSStore(ref.bucket, client_options=CLIENT_OPTIONS, retry_config=RETRY_CONFIG)
        else:
            store = AzureStore(ref.bucket, client_options=CLIENT_OPTIONS, retry_config=RETRY_CONFIG)
        self._stores[(ref.scheme, ref.bucket)] = store
        return store

    async def sign(self, source: str) -> str:
        """A GET URL of the object, valid for the presign TTL: a credential, kept in memory only.

        Raises ObjectError (code SOURCE_SIGN_FAILED) when the store cannot sign (no credentials)."""
        import obstore

        ref = parse_object_url(source)
        known = self._remembered(self._sign_failures, ref)
        if known is not None:
            raise ObjectError("SOURCE_SIGN_FAILED", known)
        try:
            url = await obstore.sign_async(self.store(ref), "GET", ref.key, self.presign_ttl)
        except Exception as exc:  # noqa: BLE001 - obstore raises its own and built-in errors; each is a reason
            reason = _sign_reason(ref, exc)
            self._sign_failures[(ref.scheme, ref.bucket)] = (time.monotonic() + MEMO_S, reason)
            raise ObjectError("SOURCE_SIGN_FAILED", reason) from None
        self._addresses[source] = without_query(url)
        return url

    async def address(self, source: str) -> str | None:
        """The object's URL without a signature, as this process's store spells it (None when it cannot
        sign): what the platform's echo of a URL signed for the object is compared with first."""
        if source not in self._addresses:
            try:
                await self.sign(source)
            except ObjectError:
                return None
        return self._addresses[source]

    @staticmethod
    def _remembered(memo: dict[tuple[str, str], tuple[float, str]], ref: ObjectRef) -> str | None:
        found = memo.get((ref.scheme, ref.bucket))
        if found is None or found[0] < time.monotonic():
            return None
        return found[1]

    async def head(self, source: str) -> int:
        """The object's size, asked of the store; ObjectError with a code and a reason otherwise."""
        import obstore

        ref = parse_object_url(source)
        known = self._remembered(self._head_failures, ref)
        if known is not None:
            raise ObjectError("SOURCE_UNREACHABLE", known)
        try:
            meta = await obstore.head_async(self.store(ref), ref.key)
        except FileNotFoundError:
            raise ObjectError(
                "SOURCE_NOT_FOUND",
                f"no object {ref.key!r} in {ref.scheme}://{ref.bucket} (or no such bucket): check the bucket "
                "and the key, or drop the row",
            ) from None
        except Exception as exc:  # noqa: BLE001 - obstore's errors by class name; every one becomes a reason
            code, reason = _head_failure(ref, exc)
            if code == "SOURCE_UNREACHABLE" and _no_connection(exc):  # the store's, not the object's
                self._head_failures[(ref.scheme, ref.bucket)] = (
                    time.monotonic() + MEMO_S,
                    f"cannot reach the store of {ref.scheme}://{ref.bucket} ({_first_line(exc)}): check the "
                    "endpoint, the region and the network",
                )
            raise ObjectError(code, reason) from None
        return int(meta["size"])


class ObjectError(Exception):
    """An object source could not be signed or looked at; `code` is the report's code."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    # obstore's messages name the request URL; keep only its host and path (no query: no signature).
    return re.sub(r"(https?://[^\s?]+)\?\S*", r"\1", text)[:200]


def _sign_reason(ref: ObjectRef, exc: Exception) -> str:
    hint = {
        "s3": "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a profile, or an instance role) and AWS_REGION",
        "gs": "set GOOGLE_APPLICATION_CREDENTIALS to a service account key file",
        "az": "set AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY",
    }[ref.scheme]
    return f"cannot sign a URL for {ref.scheme}://{ref.bucket} ({_first_line(exc)}): {hint}"


def _no_connection(exc: Exception) -> bool:
    """Whether obstore's error says the store was not reached at all (not a status it answered)."""
    text = str(exc).lower()
    return any(s in text for s in ("error sending request", "connect", "timed out", "timeout", "dns"))


def _head_failure(ref: ObjectRef, exc: Exception) -> tuple[str, str]:
    name = type(exc).__name__
    where = f"{ref.scheme}://{ref.bucket}/{ref.key}"
    if name in ("PermissionDeniedError", "UnauthenticatedError"):
        return (
            "SOURCE_FORBIDDEN",
            f"the store refused to show {where} ({name}): give the credentials read access to the bucket",
        )
    return (
        "SOURCE_UNREACHABLE",
        f"cannot look at {where} ({_first_line(exc)}): check the endpoint (--s3-endpoint, AWS_ENDPOINT_URL), "
        "the bucket, the region and the credentials",
    )


async def head_objects(
    stores: ObjectStores, sources: Iterable[tuple[int, str]], *, concurrency: int
) -> list[tuple[int, int | None, ObjectError | None, float]]:
    """(row, size, error, seconds taken) for each object source, `concurrency` store requests at a
    time, in row order."""
    gate = asyncio.Semaphore(concurrency)
    found: list[tuple[int, int | None, ObjectError | None, float]] = []

    async def one(row: int, source: str) -> None:
        started = time.monotonic()
        try:
            size, error = await stores.head(source), None
        except ObjectError as exc:
            size, error = None, exc
        finally:
            gate.release()
        found.append((row, size, error, round(time.monotonic() - started, 3)))

    async with asyncio.TaskGroup() as group:
        for row, source in sources:
            await gate.acquire()  # a slot before the task: never more than `concurrency` at once
            group.create_task(one(row, source))
    return sorted(found, key=lambda f: f[0])
