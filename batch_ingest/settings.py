"""`Settings`, the value object every command runs on: each setting declared once, resolved in one function.

Each setting is one field of `Settings`: ``field(default=..., metadata=setting(kind, help, ...))``. The
field gives its name (also its config-file key; its flag is ``--name-with-dashes``, its environment variable
``SMARTSTREAM_NAME``), its type and its default; the `Kind` converts and checks a raw value (flag text,
environment text, TOML value) and sets the flag's click type and its range. Everything else is generated
from `SETTINGS`: the click options (`cli/common.py`), the conversion and checks (`resolve_settings`),
the config file's known keys, what is secret, `config`'s output and ``summary.json``'s settings
(`Settings.masked`), and the README's settings table (tests/test_settings.py compares it).

Precedence, highest first: command-line flag, environment variable (``SMARTSTREAM_*``),
config file (``batch-ingest.toml`` in the working folder, or ``--config FILE``), default.
"""

from __future__ import annotations

import ipaddress
import math
import os
import sys
import tomllib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

from .api import defaults as api_defaults
from .api.models import EncodeStatusMap
from .api.secret import Secret
from .errors import ConfigError
from .redact import redact_url

if TYPE_CHECKING:
    import httpx

    from .api.client import SmartStreamClient
    from .api.ratelimit import RateLimiter
    from .objects import ObjectStores

__all__ = [
    "DEFAULT_API_URL",
    "DEFAULT_CONFIG_FILE",
    "ENV_PREFIX",
    "PRIVATE_FIELDS",
    "SECRET_FIELDS",
    "SETTINGS",
    "Secret",
    "Setting",
    "Settings",
    "is_loopback",
    "load_config_file",
    "resolve_settings",
    "resolve_settings_with_origins",
]

DEFAULT_API_URL = "https://ovp-s-api.smartstream.ne.jp"
DEFAULT_CONFIG_FILE = "batch-ingest.toml"
ENV_PREFIX = "SMARTSTREAM_"


# -- kinds: how a raw value becomes a setting's value ------------------------------------------


class Kind:
    """Converts and checks one setting's raw value; `source` names where it came from for errors."""

    click_type: ClassVar[Any] = None  # the flag's click type (None: text)
    is_flag: ClassVar[bool] = False  # an on/off flag without a value

    def __call__(self, source: str, value: Any, secret: bool) -> Any:
        raise NotImplementedError

    def limits(self) -> str:
        """The range of accepted values, when the docs should name it ('1 to 256'), else ''."""
        return ""


class Text(Kind):
    def __call__(self, source: str, value: Any, secret: bool) -> str:
        return str(value)


class HeaderText(Kind):
    """A value sent in an HTTP header: printable ASCII only (else httpx could not send it)."""

    def __call__(self, source: str, value: Any, secret: bool) -> str:
        text = str(value)
        if not text or any(not (0x20 < ord(c) < 0x7F) for c in text):
            shown = "" if secret else f" (got {text!r})"
            raise ConfigError(
                f"{source} must be printable ASCII without spaces{shown}: check for a stray character"
            )
        return text


@dataclass(frozen=True)
class ApiUrl(Kind):
    """An http(s) base URL without credentials in it (`example` is the one error messages show, and
    `credentials` where the credentials go instead)."""

    example: str = DEFAULT_API_URL
    credentials: str = "the API key and token are given with SMARTSTREAM_API_KEY and SMARTSTREAM_TOKEN (or email and password)"

    def __call__(self, source: str, value: Any, secret: bool) -> str:
        text = str(value).strip().rstrip("/")
        try:
            parts = urlsplit(text)
            host = parts.hostname
            parts.port  # noqa: B018 - raises ValueError for a port out of range
        except ValueError:
            raise ConfigError(
                f"{source} is not a valid URL (got {redact_url(text)!r}): use e.g. {self.example}"
            ) from None
        if text and "://" not in text:
            # "api.example.com/v1" parses as a path: the likeliest slip, named with its fix.
            raise ConfigError(
                f"{source} has no scheme (got {redact_url(text)!r}): write it as https://{redact_url(text)}"
            )
        if parts.scheme not in ("http", "https") or not host:
            raise ConfigError(
                f"{source} must be an http(s) URL such as {self.example}, got {redact_url(text)!r}"
            )
        if parts.username is not None or parts.password is not None:
            raise ConfigError(f"{source} holds credentials (user:password@): remove them; {self.credentials}")
        if parts.query or parts.fragment:
            raise ConfigError(f"{source} must be a base URL without ?query or #fragment")
        return text


class StoreUrl(Kind):
    """The address of a shared rate store: `redis://[:PASSWORD@]HOST:PORT/DB` (`rediss://` for TLS; a
    Valkey server speaks the same). A password in it is kept, and masked wherever settings are shown."""

    def __call__(self, source: str, value: Any, secret: bool) -> str:
        from .api.sharedrate import SCHEMES

        text = str(value).strip()
        example = "redis://127.0.0.1:6379/0"
        try:
            parts = urlsplit(text)
            parts.port  # noqa: B018 - raises ValueError for a port out of range
        except ValueError:
            raise ConfigError(
                f"{source} is not a valid URL (got {redact_url(text)!r}): use e.g. {example}"
            ) from None
        if parts.scheme not in SCHEMES or not parts.hostname:
            raise ConfigError(
                f"{source} must name a Redis (or Valkey) server as redis://HOST:PORT/DB or rediss://... "
                f"(e.g. {example}), got {redact_url(text)!r}"
            )
        if parts.query or parts.fragment:
            raise ConfigError(
                f"{source} takes no ?options or #fragment (got {redact_url(text)!r}): give the password as "
                "redis://:PASSWORD@HOST:PORT/DB"
            )
        db = parts.path.strip("/")
        if db and not (db.isascii() and db.isdigit()):
            raise ConfigError(
                f"{source}: the database after the host is a number (e.g. {example}), got {db!r}"
            )
        return text


class WebhookUrl(Kind):
    """An http(s) URL to POST to (`--notify`): a query and user:password@ are allowed, since webhook
    services put their secret there; the setting is private, so it is masked wherever shown."""

    def __call__(self, source: str, value: Any, secret: bool) -> str:
        from .notify import check_notify_url  # httpx comes with it: only when the setting is set

        return check_notify_url(str(value), option=source)


class Folder(Kind):
    """A folder's path (made when first needed)."""

    def __call__(self, source: str, value: Any, secret: bool) -> str:
        text = str(value).strip()
        if not text or "\x00" in text:
            raise ConfigError(f"{source} must name a folder, such as /srv/ingest/reports, got {text!r}")
        return os.path.expanduser(text)  # `~/reports` in a config file means what it says in a shell


@dataclass(frozen=True)
class Number(Kind):
    """A finite number, at least `minimum`."""

    minimum: float = 0.0
    click_type: ClassVar[Any] = float

    def __call__(self, source: str, value: Any, secret: bool) -> float:
        try:
            result = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{source} must be a number, got {value!r}") from None
        if not math.isfinite(result):
            raise ConfigError(f"{source} must be a finite number, got {value!r}")
        if result < self.minimum:
            raise ConfigError(f"{source} must be at least {self.minimum:g}, got {value!r}")
        return result


@dataclass(frozen=True)
class Whole(Kind):
    """A whole number from `minimum` to `maximum` (None: no upper bound)."""

    minimum: int = 0
    maximum: int | None = None
    click_type: ClassVar[Any] = int

    def __call__(self, source: str, value: Any, secret: bool) -> int:
        try:
            result = int(str(value).strip())
        except (TypeError, ValueError):
            raise ConfigError(f"{source} must be a whole number, got {value!r}") from None
        if result < self.minimum:
            raise ConfigError(f"{source} must be at least {self.minimum}, got {value!r}")
        if self.maximum is not None and result > self.maximum:
            raise ConfigError(f"{source} must be at most {self.maximum}, got {value!r}")
        return result

    def limits(self) -> str:
        return "" if self.maximum is None else f"{self.minimum} to {self.maximum}"


class Flag(Kind):
    """On or off: a flag without a value; `true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off` elsewhere."""

    is_flag: ClassVar[bool] = True

    def __call__(self, source: str, value: Any, secret: bool) -> bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in {"1", "true", "yes", "on"}:
            return True
        if text in {"0", "false", "no", "off", ""}:
            return False
        raise ConfigError(f"{source} must be true or false, got {value!r}")


class Bandwidth(Kind):
    """Bytes per second in rclone's syntax (`10M` is 10 MiB/s); 0 or `off`: no limit."""

    def __call__(self, source: str, value: Any, secret: bool) -> float:
        from .api.ratelimit import parse_bandwidth  # asyncio comes with it: only when the setting is set

        try:
            return parse_bandwidth(str(value))
        except (ValueError, IndexError):
            raise ConfigError(
                f"{source} must be a bandwidth such as 10M (MiB/s), 500K or 1G, got {value!r}"
            ) from None


class StatusMap(Kind):
    """`succeeded=2;failed=3,4`, or from TOML a table `{succeeded = [2], failed = [3, 4]}`."""

    def __call__(self, source: str, value: Any, secret: bool) -> EncodeStatusMap:
        if isinstance(value, EncodeStatusMap):
            return value
        if isinstance(value, Mapping):
            value = ";".join(f"{k}={','.join(str(v) for v in vs)}" for k, vs in value.items())
        try:
            return EncodeStatusMap.parse(str(value))
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from None


# -- the declaration -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One setting as declared on its `Settings` field (the name and default come from the field)."""

    kind: Kind
    help: str  # what it means, lower case, no final period: the flag's help and the README's meaning
    flag: bool = True  # False: environment variable and config file only
    secret: bool = False  # held as a `Secret`; never stored; a warning when found in a config file
    private: bool = False  # not a secret, but masked wherever settings are shown or stored
    required: bool = False  # needed to reach the API (see `Settings.require_api`)
    default_text: str | None = None  # the default as the docs show it, when the value does not speak
    scope: str = "work"  # the commands that take its flag: see SCOPES
    name: str = ""
    default: Any = None

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def meaning(self) -> str:
        """The help with the accepted range, as the README's table and the flag's help say it."""
        limits = self.kind.limits()
        if not limits:
            return self.help
        if self.help.endswith(")"):  # "... (0: no pacing)" -> "... (0 to 1000; 0: no pacing)"
            head, _, tail = self.help.rpartition("(")
            return f"{head}({limits}; {tail}"
        return f"{self.help} ({limits})"

    def shown_default(self, code: Callable[[str], str] = str) -> str:
        """The default for people ('' when there is none); `code` marks literal text (backticks)."""
        if self.required:
            return "(required)"
        if self.default_text is not None:
            return self.default_text
        value = self.default
        if value is None:
            return ""
        if isinstance(value, bool):
            return "on" if value else "off"
        if isinstance(value, int | float):
            return f"{value:g}"
        return code(str(value))

    def used_by(self, scope: str) -> bool:
        """Whether a command of `scope` (see SCOPES) takes this setting's flag."""
        return SCOPES.index(self.scope) <= SCOPES.index(scope)

    def parse(self, source: str, value: Any) -> Any:
        """The setting's value from a raw one; ConfigError (naming `source`) when it is not valid."""
        result = self.kind(source, value, self.secret)
        return Secret(result) if self.secret else result


SCOPES = ("api", "plan", "work")
"""Which commands take a setting's flag, each scope within the next: `api`, every command that talks to
the API (profiles, jobs); `plan`, also those that plan a run (validate); `work`, only those that work
rows through (run, resume, retry, collect). `config` takes every flag."""


def setting(kind: Kind, help: str, **more: Any) -> dict[str, Setting]:
    """The metadata of a `Settings` field that declares one setting (see `Setting` for `more`)."""
    return {"setting": Setting(kind, help, **more)}


@dataclass(frozen=True)
class Settings:
    """Everything a command needs to talk to the API and pace a run. Secrets are `Secret`s.

    The order of the fields is the order `config` prints them in and ``summary.json`` records them.
    """

    api_url: str = field(default=DEFAULT_API_URL, metadata=setting(ApiUrl(), "API base URL", scope="api"))
    merchant_id: str | None = field(
        default=None, metadata=setting(HeaderText(), "merchant id", required=True, scope="api")
    )
    api_key: Secret | None = field(
        default=None, metadata=setting(HeaderText(), "API key", secret=True, required=True, scope="api")
    )
    token: Secret | None = field(
        default=None,
        metadata=setting(
            HeaderText(),
            "bearer token as is (the run stops with exit 3 when it expires)",
            secret=True,
            scope="api",
        ),
    )
    email: str | None = field(
        default=None,
        metadata=setting(
            Text(),
            "email for the auth-token endpoint: with `--password`, tokens are obtained there and renewed "
            "before expiry and after an unexpected 401",
            private=True,
            scope="api",
        ),
    )
    password: Secret | None = field(
        default=None,
        metadata=setting(
            Text(), "password for the auth-token endpoint (see `--email`)", secret=True, scope="api"
        ),
    )
    rate: float = field(
        default=50.0,  # the platform's default account limit
        metadata=setting(Number(0.0), "requests per minute, everything included (0: no limit)", scope="api"),
    )
    concurrency: int = field(
        default=8,
        metadata=setting(Whole(1, 256), "submissions in flight"),  # 256: past any account's rate limit
    )
    upload_concurrency: int = field(
        default=2, metadata=setting(Whole(1, 64), "uploads in flight, part of `--concurrency`")
    )
    retries: int = field(
        default=api_defaults.GET_RETRIES,
        metadata=setting(Whole(0), "retries of a transient failure", scope="api"),
    )
    connect_timeout: float = field(
        default=api_defaults.CONNECT_TIMEOUT_S,
        metadata=setting(
            Number(0.001), "seconds to wait for a connection to the API", flag=False, scope="api"
        ),
    )
    read_timeout: float = field(
        default=api_defaults.READ_TIMEOUT_S,
        metadata=setting(
            Number(0.001),
            "seconds to wait for each read of an answer; a whole answer must come within the connect "
            "timeout plus twice this",
            flag=False,
            scope="api",
        ),
    )
    job_timeout: float = field(
        default=6 * 3600.0,  # a long encode is hours, not days
        metadata=setting(Number(0.001), "seconds a job may take after submission"),
    )
    poll_min_interval: float = field(
        default=2.0, metadata=setting(Number(0.0), "shortest pause between polls (s)")
    )
    poll_max_interval: float = field(
        default=30.0, metadata=setting(Number(0.0), "longest pause between polls (s)")
    )
    in_doubt_delay: float = field(
        default=2.0,
        metadata=setting(
            Number(0.0), "seconds to wait before looking up a create that got no answer", flag=False
        ),
    )
    encode_status_map: EncodeStatusMap = field(
        default=EncodeStatusMap(),
        metadata=setting(
            StatusMap(), "which `encode_status` values are final, e.g. `succeeded=2;failed=3,4,9`"
        ),
    )
    allow_http: bool = field(
        default=False,
        metadata=setting(
            Flag(),
            "allow a plain `http://` API URL to a host other than this machine (key and token then cross "
            "the network unencrypted); without it such a URL is refused",
            scope="api",
        ),
    )
    burst: int = field(
        default=api_defaults.BURST,
        metadata=setting(
            Whole(0, 1000),
            "requests that may leave at once; after them requests are paced one every 60/`--rate` s "
            "(0: no pacing, a minute's budget at once)",
            scope="api",
        ),
    )
    rate_store: str | None = field(
        default=None,
        metadata=setting(
            StoreUrl(),
            "a Redis (`redis://HOST:PORT/DB`) through which every process naming it shares one `--rate`: "
            "shards and independent runs of the same account alike",
            default_text="none: this process alone (a shard: `--rate` / N)",
        ),
    )
    max_in_flight: int = field(
        default=0,
        metadata=setting(
            Whole(0),
            "jobs of this run queued or encoding on the platform at once; submission waits for room while "
            "polling goes on (video platforms cap concurrent jobs; the emulator's `--max-in-flight` "
            "answers over-cap creates with 429)",
            default_text="0 (no cap)",
        ),
    )
    bwlimit: float = field(
        default=0.0,
        metadata=setting(
            Bandwidth(),
            "upload bandwidth for all uploads of the run together, rclone's syntax: `10M` is 10 MiB/s, "
            "also `500K`, `1G`",
            default_text="no limit",
            scope="plan",
        ),
    )

    presign_ttl: int = field(
        default=24 * 3600,
        metadata=setting(
            Whole(1, 7 * 24 * 3600),
            "seconds the GET URL signed for an `s3://`, `gs://` or `az://` source stays valid; signed anew "
            "for each attempt, so it must outlast the platform's queue (7 days is the most S3 and GCS allow)",
            default_text="86400 (24 h)",
            scope="plan",
        ),
    )
    s3_endpoint: str | None = field(
        default=None,
        metadata=setting(
            ApiUrl(
                example="http://127.0.0.1:9000",
                credentials="give them with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
            ),
            "endpoint of an S3-compatible store (MinIO, Ceph, Wasabi, R2) for `s3://` sources",
            default_text="`AWS_ENDPOINT_URL`, else AWS",
            scope="plan",
        ),
    )
    check_concurrency: int = field(
        default=32,
        metadata=setting(
            Whole(1, 1024),
            "source checks and probes (`--check-sources`, `--probe`) in flight; they never touch the API",
            scope="plan",
        ),
    )
    check_per_host: int = field(
        default=16,
        metadata=setting(
            Whole(1, 1024),
            "source checks in flight to one host, within `--check-concurrency` (a cap for a fragile origin)",
            scope="plan",
        ),
    )

    reports_root: str = field(
        default="reports",
        metadata=setting(
            Folder(),
            "the folder under which each run gets its own `<run-id>` folder (`--report-dir` names one "
            "run's folder exactly; `retry` puts its run beside the run it retries)",
        ),
    )
    notify: str | None = field(
        default=None,
        metadata=setting(
            WebhookUrl(),
            "a URL to POST the run's summary to as JSON when the run ends, whatever the outcome "
            "(signed when `SMARTSTREAM_NOTIFY_SECRET` is set; retried a few times; never fails the run)",
            private=True,
            default_text="none",
        ),
    )
    notify_secret: Secret | None = field(
        default=None,
        metadata=setting(
            Text(),
            "the key of the HMAC-SHA256 signature of `--notify`'s POST (header `X-Batch-Ingest-Signature`)",
            secret=True,
            flag=False,
        ),
    )

    def require_api(self) -> Settings:
        """Self, or ConfigError naming the flag and the variable of the first missing setting."""
        if not self.merchant_id:
            raise ConfigError(
                "the merchant id is not set: pass --merchant-id or export SMARTSTREAM_MERCHANT_ID"
            )
        if not self.api_key:
            raise ConfigError("the API key is not set: pass --api-key or export SMARTSTREAM_API_KEY")
        if not self.token and not (self.email and self.password):
            raise ConfigError(
                "no way to authenticate: pass --token (or export SMARTSTREAM_TOKEN), "
                "or pass --email and --password (or export SMARTSTREAM_EMAIL and SMARTSTREAM_PASSWORD)"
            )
        if self.email and not self.password and not self.token:
            raise ConfigError("--email needs --password (or export SMARTSTREAM_PASSWORD)")
        if urlsplit(self.api_url).scheme == "http" and not is_loopback(self.api_url) and not self.allow_http:
            raise ConfigError(
                f"the API URL {self.api_url} is plain http: the API key and token would cross the network "
                "unencrypted; use https, or pass --allow-http (config allow_http = true) if you mean it"
            )
        return self

    def masked(self) -> dict[str, Any]:
        """The settings as plain values with every secret (and the private email) masked, for display."""
        out: dict[str, Any] = {}
        for spec in SETTINGS:
            value = getattr(self, spec.name)
            if spec.secret or spec.private:
                value = "********" if value else ""
            elif isinstance(spec.kind, StoreUrl) and value:
                value = redact_url(value)  # a password in the store's URL
            elif isinstance(value, EncodeStatusMap):
                value = str(value)
            out[spec.name] = value
        return out

    def make_client(
        self,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int | None = None,
        limiter: RateLimiter | None = None,
        shared: bool = False,
        member: str | None = None,
    ) -> SmartStreamClient:
        """A new API client configured from these settings (which must name merchant, key and auth).
        `shared`: a command that works rows through (run, resume, retry, collect) shares the budget
        through `rate_store` when one is set; a look-up (validate, jobs, profiles) paces itself.
        `member`: the run it works for, its name on the store (see `SharedRateLimiter`)."""
        # Imported here: the command line imports this module to build its options, and starts
        # without loading httpx.
        from .api.auth import Auth
        from .api.client import SmartStreamClient

        self.require_api()
        assert self.merchant_id and self.api_key
        return SmartStreamClient(
            base_url=self.api_url,
            merchant_id=self.merchant_id,
            auth=Auth(self.api_key, token=self.token, email=self.email, password=self.password),
            limiter=limiter or self._make_limiter(shared, member),
            transport=transport,
            max_connections=max_connections or self.concurrency + 1,
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            get_retries=self.retries,
            bwlimit=self.bwlimit,
        )

    def _make_limiter(self, shared: bool, member: str | None) -> RateLimiter:
        from .api.ratelimit import RateLimiter

        if shared and self.rate_store and self.rate > 0:
            from .api.sharedrate import SharedRateLimiter, namespace_for

            assert self.merchant_id
            return SharedRateLimiter(
                self.rate_store,
                self.rate,
                namespace=namespace_for(self.api_url, self.merchant_id),
                burst=self.burst or None,
                member=member,
            )
        return RateLimiter(self.rate, burst=self.burst or None)

    def make_object_stores(self) -> ObjectStores:
        """What signs and looks at `s3://`, `gs://` and `az://` sources, configured from these settings."""
        from .objects import ObjectStores

        return ObjectStores(presign_ttl_s=self.presign_ttl, s3_endpoint=self.s3_endpoint)


def _declared() -> tuple[Setting, ...]:
    out = []
    for f in fields(Settings):
        out.append(replace(f.metadata["setting"], name=f.name, default=f.default))
    return tuple(out)


SETTINGS: tuple[Setting, ...] = _declared()
"""Every setting, in the order of `Settings`' fields."""
SECRET_FIELDS = frozenset(s.name for s in SETTINGS if s.secret)
PRIVATE_FIELDS = frozenset(s.name for s in SETTINGS if s.private)  # never stored or printed
_BY_NAME = {s.name: s for s in SETTINGS}


def is_loopback(url: str) -> bool:
    """True when `url`'s host is this machine (localhost, 127.0.0.0/8, ::1)."""
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_config_file(
    path: Path | None, *, warn: Callable[[str], Any] | None = None, strict: bool = True
) -> tuple[dict[str, Any], Path | None]:
    """Read a TOML config file: (settings table, path read). No file at the default place is fine.

    A secret in the file is accepted with a warning (louder when others can read the file).
    `strict=False` drops unknown keys instead of refusing the file (and warns of nothing): for reading
    a few settings when the file as a whole may be wrong.
    """
    explicit = path is not None
    path = path or Path(DEFAULT_CONFIG_FILE)
    if not path.exists():
        if explicit:
            raise ConfigError(f"config file {path} does not exist: check --config")
        return {}, None
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    table = data.get("batch-ingest", data)
    unknown = sorted(k for k in table if k.replace("-", "_") not in _BY_NAME)
    if unknown and not strict:
        table = {k: v for k, v in table.items() if k not in unknown}
    elif unknown:
        raise ConfigError(
            f"config file {path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(_BY_NAME))}"
        )
    values = {k.replace("-", "_"): v for k, v in table.items()}
    secrets_found = sorted(SECRET_FIELDS & set(values))
    if secrets_found and strict:
        message = f"config file {path} holds {', '.join(secrets_found)}: prefer the SMARTSTREAM_* environment variables"
        if path.stat().st_mode & 0o077:
            message += f"; the file is readable by other users: chmod 600 {path}"
        (warn or (lambda m: print(f"batch-ingest: warning: {m}", file=sys.stderr)))(message)
    return values, path


def resolve_settings(
    flags: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    config: Mapping[str, Any] | None = None,
) -> Settings:
    """Resolve settings: flag, then `SMARTSTREAM_*` environment variable, then config, then default.

    `flags` values of None mean "not given". Raises ConfigError for an invalid value,
    naming where the value came from.
    """
    return resolve_settings_with_origins(flags, env=env, config=config)[0]


def resolve_settings_with_origins(
    flags: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    config: Mapping[str, Any] | None = None,
    config_name: str = "config file",
    only: Collection[str] | None = None,
) -> tuple[Settings, dict[str, str]]:
    """`resolve_settings`, and where each value came from: `flag --rate`, `env SMARTSTREAM_RATE`,
    `<config_name>` or `default` (what `config` shows beside each value). `only`: resolve just these
    settings (the others keep their defaults), e.g. to reach a monitor when another setting is invalid."""
    flags = flags or {}
    env = os.environ if env is None else env
    config = config or {}
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for spec in SETTINGS:
        name = spec.name
        if only is not None and name not in only:
            continue
        if flags.get(name) is not None:
            source, raw, origins[name] = spec.option, flags[name], f"flag {spec.option}"
        elif env.get(spec.env, "") != "":
            source, raw, origins[name] = spec.env, env[spec.env], f"env {spec.env}"
        elif config.get(name) is not None:
            source, raw, origins[name] = f"config setting {name}", config[name], config_name
        else:
            origins[name] = "default"
            continue
        values[name] = spec.parse(source, raw)
    settings = Settings(**values)
    if settings.poll_max_interval < settings.poll_min_interval:
        raise ConfigError("poll_max_interval must not be smaller than poll_min_interval")
    if settings.upload_concurrency > settings.concurrency:
        settings = replace(settings, upload_concurrency=settings.concurrency)
    return settings, origins
