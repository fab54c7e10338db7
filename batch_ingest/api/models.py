"""Records the API returns (`Job`, `JobProfile`, `Page`) and the encode-status mapping."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Verdict(StrEnum):
    """What an `encode_status` means for a job (`EncodeStatusMap.classify`)."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"


class MalformedRecord(ValueError):
    """An API record whose fields do not have the documented types (the client adds the endpoint)."""


def _field_text(data: dict[str, Any], key: str, *, required: bool = False) -> str | None:
    value = data.get(key)
    if value is None:
        if required:
            raise MalformedRecord(f"it has no {key}")
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise MalformedRecord(f"its {key} is a {type(value).__name__}, not a string")
    text = str(value)
    if required and not text:
        raise MalformedRecord(f"its {key} is empty")
    return text


def _field_date(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or parse_api_date(value) is None:
        raise MalformedRecord(f"its {key} is {value!r:.40}, not a DateString")
    return value


def _field_int(data: dict[str, Any], key: str) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedRecord(f"its {key} is {value!r:.40}, not an integer")
    return value


def _record(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise MalformedRecord(f"it is a {type(data).__name__}, not an object")
    return data


def parse_api_date(value: str | None) -> datetime | None:
    """Parse a SmartSTREAM DateString (`2017-10-01T00:00:00.000Z`) into an aware datetime."""
    if not value or not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (ValueError, OverflowError):
        return None


def format_api_date(epoch: float) -> str:
    """Format seconds since the epoch as a SmartSTREAM DateString (UTC, milliseconds)."""
    dt = datetime.fromtimestamp(epoch, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class Job:
    """One ingest job as the API describes it."""

    id: str
    ref_id: str | None = None
    name: str | None = None
    merchant_id: str | None = None
    job_profile_id: str | None = None
    media_id: str | None = None
    description: str | None = None
    encode_status: int | None = None
    source_type: str | None = None
    source_url: str | None = None
    created_at: str | None = None
    updated_at: str | None = None

    @classmethod
    def from_api(cls, data: Any) -> Job:
        """Build a Job from an API response body; missing optional fields are None, wrong types raise
        MalformedRecord (integer ids are taken as their text)."""
        data = _record(data)
        return cls(
            id=_field_text(data, "id", required=True),  # type: ignore[arg-type]
            ref_id=_field_text(data, "ref_id"),
            name=_field_text(data, "name"),
            merchant_id=_field_text(data, "merchant_id"),
            job_profile_id=_field_text(data, "job_profile_id"),
            media_id=_field_text(data, "media_id"),
            description=_field_text(data, "description"),
            encode_status=_field_int(data, "encode_status"),
            source_type=_field_text(data, "source_type"),
            source_url=_field_text(data, "source_url"),
            created_at=_field_date(data, "created_at"),
            updated_at=_field_date(data, "updated_at"),
        )


@dataclass(frozen=True)
class JobProfile:
    """One job profile (encoding preset)."""

    id: str
    ref_id: str | None = None
    name: str | None = None
    description: str | None = None
    merchant_id: str | None = None
    created_at: str | None = None
    updated_at: str | None = None

    @classmethod
    def from_api(cls, data: Any) -> JobProfile:
        """Build a JobProfile from an API response body; wrong types raise MalformedRecord."""
        data = _record(data)
        profile_id = _field_text(data, "id", required=True)
        assert profile_id is not None
        if not profile_id.isdigit():
            raise MalformedRecord(f"its id is {profile_id!r:.40}, not a number")
        return cls(
            id=profile_id,
            ref_id=_field_text(data, "ref_id"),
            name=_field_text(data, "name"),
            description=_field_text(data, "description"),
            merchant_id=_field_text(data, "merchant_id"),
            created_at=_field_date(data, "created_at"),
            updated_at=_field_date(data, "updated_at"),
        )


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list endpoint. `count` is whatever the API said; never used to end paging."""

    items: list[T]
    count: int | None
    page: int
    limit: int


_MAP_RE = re.compile(r"^\s*(succeeded|failed)\s*=\s*(-?\d+(?:\s*,\s*-?\d+)*)\s*$")


@dataclass(frozen=True)
class EncodeStatusMap:
    """Which `encode_status` integers are terminal. Anything else is still in progress.

    The vendor publishes no values; the default is our working assumption
    (0 queued, 1 encoding, 2 completed, 3 failed, 4 cancelled).
    """

    succeeded: frozenset[int] = field(default_factory=lambda: frozenset({2}))
    failed: frozenset[int] = field(default_factory=lambda: frozenset({3, 4}))

    def classify(self, status: int | None) -> Verdict:
        """Whether an encode status means the job succeeded, failed or is still in progress."""
        if status in self.succeeded:
            return Verdict.SUCCEEDED
        if status in self.failed:
            return Verdict.FAILED
        return Verdict.IN_PROGRESS

    @classmethod
    def parse(cls, text: str) -> EncodeStatusMap:
        """Parse `succeeded=2;failed=3,4` (either part may be omitted). Raises ValueError."""
        parts: dict[str, frozenset[int]] = {}
        for chunk in filter(None, (c.strip() for c in text.split(";"))):
            m = _MAP_RE.match(chunk)
            if not m:
                raise ValueError(
                    f"cannot read encode-status mapping {chunk!r}: write it like 'succeeded=2;failed=3,4'"
                )
            parts[m.group(1)] = frozenset(int(x) for x in m.group(2).split(","))
        result = cls(**parts)
        if result.succeeded & result.failed:
            raise ValueError(
                f"encode status {sorted(result.succeeded & result.failed)} is listed as both succeeded and failed"
            )
        return result

    def __str__(self) -> str:
        fmt = lambda s: ",".join(str(x) for x in sorted(s))  # noqa: E731
        return f"succeeded={fmt(self.succeeded)};failed={fmt(self.failed)}"
