"""`Settings`, the value object every command runs on, and the one function that resolves it.

Precedence, highest first: command-line flag, environment variable (``SMARTSTREAM_*``),
config file (``batch-ingest.toml`` in the working folder, or ``--config FILE``), default.
"""

from __future__ import annotations

import ipaddress
import math
import os
import sys
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .api.models import EncodeStatusMap
from .errors import ConfigError
from .redact import redact_url

DEFAULT_API_URL = "https://ovp-s-api.smartstream.ne.jp"
DEFAULT_RATE_PER_MINUTE = 50.0  # the platform's default account limit
DEFAULT_CONCURRENCY = 8
DEFAULT_UPLOAD_CONCURRENCY = 2
DEFAULT_RETRIES = 5
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 60.0
DEFAULT_JOB_TIMEOUT = 6 * 3600.0  # a long encode is hours, not days
DEFAULT_CONFIG_FILE = "batch-ingest.toml"
MAX_CONCURRENCY = 256  # submissions in flight; far past what any account's rate limit can use
MAX_UPLOAD_CONCURRENCY = 64
ENV_PREFIX = "SMARTSTREAM_"


class Secret:
    """A string that never shows itself in repr, str, logs or reports."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        """The secret value, for the one place that sends it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


def _float(name: str, value: Any, minimum: float = 0.0) -> float:
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(result):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if result < minimum:
        raise ConfigError(f"{name} must be at least {minimum:g}, got {value!r}")
    return result


def _int(name: str, value: Any, minimum: int = 0, maximum: int | None = None) -> int:
    try:
        result = int(str(value).strip())
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a whole number, got {value!r}") from None
    if result < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value!r}")
    if maximum is not None and result > maximum:
        raise ConfigError(f"{name} must be at most {maximum}, got {value!r}")
    return result


def _header_value(name: str, value: Any, secret: bool = False) -> str:
    """A value sent in an HTTP header: printable ASCII only (else httpx could not send it)."""
    text = str(value)
    if not text or any(not (0x20 < ord(c) < 0x7F) for c in text):
        shown = "" if secret else f" (got {text!r})"
        raise ConfigError(
            f"{name} must be printable ASCII without spaces{shown}: check for a stray character"
        )
    return text


def _api_url(name: str, value: Any) -> str:
    """An http(s) base URL without credentials in it."""
    text = str(value).strip().rstrip("/")
    try:
        parts = urlsplit(text)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        raise ConfigError(
            f"{name} is not a valid URL (got {redact_url(text)!r}): use e.g. {DEFAULT_API_URL}"
        ) from None
    if parts.scheme not in ("http", "https") or not host:
        raise ConfigError(
            f"{name} must be an http(s) URL such as {DEFAULT_API_URL}, got {redact_url(text)!r}"
        )
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            f"{name} holds credentials (user:password@): remove them; the API key and token are given "
            "with SMARTSTREAM_API_KEY and SMARTSTREAM_TOKEN (or email and password)"
        )
    if parts.query or parts.fragment:
        raise ConfigError(f"{name} must be a base URL without ?query or #fragment")
    return text


def is_loopback(url: str) -> bool:
    """True when `url`'s host is this machine (localhost, 127.0.0.0/8, ::1)."""
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off", ""}:
        return False
    raise ConfigError(f"{name} must be true or false, got {value!r}")


def _bandwidth(name: str, value: Any) -> float:
    from .api.ratelimit import parse_bandwidth

    try:
        return parse_bandwidth(str(value))
    except (ValueError, IndexError):
        raise ConfigError(
            f"{name} must be a bandwidth such as 10M (MiB/s), 500K or 1G, got {value!r}"
        ) from None


def _status_map(name: str, value: Any) -> EncodeStatusMap:
    if isinstance(value, EncodeStatusMap):
        return value
    if isinstance(value, Mapping):  # from TOML: {succeeded = [2], failed = [3, 4]}
        value = ";".join(f"{k}={','.join(str(v) for v in vs)}" for k, vs in value.items())
    try:
        return EncodeStatusMap.parse(str(value))
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None


@dataclass(frozen=True)
class Settings:
    """Everything a command needs to talk to the API and pace a run. Secrets are `Secret`s."""

    api_url: str = DEFAULT_API_URL
    merchant_id: str | None = None
    api_key: Secret | None = None
    token: Secret | None = None
    email: str | None = None
    password: Secret | None = None
    rate: float = DEFAULT_RATE_PER_MINUTE
    concurrency: int = DEFAULT_CONCURRENCY
    upload_concurrency: int = DEFAULT_UPLOAD_CONCURRENCY
    retries: int = DEFAULT_RETRIES
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    job_timeout: float = DEFAULT_JOB_TIMEOUT
    poll_min_interval: float = 2.0
    poll_max_interval: float = 30.0
    in_doubt_delay: float = 2.0  # pause before looking up a create that got no answer
    encode_status_map: EncodeStatusMap = field(default_factory=EncodeStatusMap)
    allow_http: bool = False  # plain http:// to a host other than this machine
    burst: int = 3  # requests that may leave at once before the even pace applies (0: no pacing)
    max_in_flight: int = 0  # jobs of this run queued or encoding on the platform at once (0: no cap)
    bwlimit: float = 0.0  # bytes per second for all uploads of the run together (0: no limit)

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
        """The settings as plain values with every secret masked, for display."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Secret) or f.name in PRIVATE_FIELDS:
                value = "********" if value else ""
            elif isinstance(value, EncodeStatusMap):
                value = str(value)
            out[f.name] = value
        return out

    def with_changes(self, **changes: Any) -> Settings:
        """A copy with some fields replaced."""
        return replace(self, **changes)


# name -> converter; the environment variable is SMARTSTREAM_<NAME>.
_CONVERTERS: dict[str, Any] = {
    "api_url": _api_url,
    "merchant_id": lambda n, v: _header_value(n, v),
    "api_key": lambda n, v: Secret(_header_value(n, v, secret=True)),
    "token": lambda n, v: Secret(_header_value(n, v, secret=True)),
    "email": lambda n, v: str(v),
    "password": lambda n, v: Secret(str(v)),
    "rate": lambda n, v: _float(n, v, 0.0),
    "concurrency": lambda n, v: _int(n, v, 1, MAX_CONCURRENCY),
    "upload_concurrency": lambda n, v: _int(n, v, 1, MAX_UPLOAD_CONCURRENCY),
    "retries": lambda n, v: _int(n, v, 0),
    "connect_timeout": lambda n, v: _float(n, v, 0.001),
    "read_timeout": lambda n, v: _float(n, v, 0.001),
    "job_timeout": lambda n, v: _float(n, v, 0.001),
    "poll_min_interval": lambda n, v: _float(n, v, 0.0),
    "poll_max_interval": lambda n, v: _float(n, v, 0.0),
    "in_doubt_delay": lambda n, v: _float(n, v, 0.0),
    "encode_status_map": _status_map,
    "allow_http": _bool,
    "burst": lambda n, v: _int(n, v, 0, 1000),
    "max_in_flight": lambda n, v: _int(n, v, 0),
    "bwlimit": _bandwidth,
}
SECRET_FIELDS = frozenset({"api_key", "token", "password"})
PRIVATE_FIELDS = frozenset({"email"})  # not a secret, but private: never stored or printed


def load_config_file(
    path: Path | None, *, warn: Callable[[str], Any] | None = None
) -> tuple[dict[str, Any], Path | None]:
    """Read a TOML config file: (settings table, path read). No file at the default place is fine.

    A secret in the file is accepted with a warning (louder when others can read the file).
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
    unknown = sorted(k for k in table if k.replace("-", "_") not in _CONVERTERS)
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown setting(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(_CONVERTERS))}"
        )
    values = {k.replace("-", "_"): v for k, v in table.items()}
    secrets_found = sorted(SECRET_FIELDS & set(values))
    if secrets_found:
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
    flags = flags or {}
    env = os.environ if env is None else env
    config = config or {}
    values: dict[str, Any] = {}
    for name, convert in _CONVERTERS.items():
        env_name = ENV_PREFIX + name.upper()
        if flags.get(name) is not None:
            source, raw = "--" + name.replace("_", "-"), flags[name]
        elif env.get(env_name, "") != "":
            source, raw = env_name, env[env_name]
        elif config.get(name) is not None:
            source, raw = f"config setting {name}", config[name]
        else:
            continue
        values[name] = convert(source, raw)
    settings = Settings(**values)
    if settings.poll_max_interval < settings.poll_min_interval:
        raise ConfigError("poll_max_interval must not be smaller than poll_min_interval")
    if settings.upload_concurrency > settings.concurrency:
        settings = replace(settings, upload_concurrency=settings.concurrency)
    return settings
