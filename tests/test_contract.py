"""Contract: every endpoint and every error code of the vendor page, through the client.

Each test runs twice: against the emulator on a real loopback socket and in-process
through httpx.ASGITransport (the `api_factory` fixture).
"""

from __future__ import annotations

import hashlib
import re

import httpx
import pytest
from batch_ingest.emulator import EmulatorConfig
from batch_ingest.errors import AuthError, NotFoundError, PermanentApiError, ServerError

pytestmark = pytest.mark.anyio

DATE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
CONFIG = EmulatorConfig(rate_limit=0, queue_seconds=60, encode_seconds=60)
JOB_KEYS = {
    "id",
    "ref_id",
    "name",
    "merchant_id",
    "job_profile_id",
    "media_id",
    "description",
    "encode_status",
    "source_type",
    "source_url",
    "created_at",
    "updated_at",
}
PROFILE_KEYS = {"merchant_id", "id", "ref_id", "name", "description", "created_at", "updated_at"}


def raw(api, config=CONFIG):
    """An httpx client that speaks to the same emulator as `api`, with valid credentials."""
    headers = {"X-Streaks-Api-Key": config.api_key, "Authorization": f"Bearer {config.token}"}
    if api.mode == "asgi":
        client = api.make_client()  # its transport serves the same app as the store's
        return httpx.AsyncClient(transport=client._pools[0]._transport, base_url=api.url, headers=headers)
    return httpx.AsyncClient(base_url=api.url, headers=headers, trust_env=False)


PREFIX = f"/v1/merchants/{CONFIG.merchant_id}"


async def test_create_remote_job_answers_documented_fields(api_factory):
    async with api_factory(CONFIG) as api, api.make_client() as client:
        job = await client.create_job(
            "https://cdn.example.com/a.mp4", 101, ref_id="r1", name="A", description="d"
        )
        assert (
            job.job_profile_id == "101" and job.ref_id == "r1" and job.name == "A" and job.description == "d"
        )
        assert job.encode_status == 0 and job.source_type == "url"
        async with raw(api) as http:
            body = (await http.get(f"{PREFIX}/jobs/{job.id}")).json()
        assert set(body) == JOB_KEYS
        assert isinstance(body["job_profile_id"], str) and isinstance(body["encode_status"], int)
        assert DATE.match(body["created_at"]) and DATE.match(body["updated_at"])


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"source_url": "https://a.example/x.mp4"},
        {"job_profile_id": 100},
        {"source_url": "ftp://a.example/x.mp4", "job_profile_id": 100},
        {"source_url": "file:///etc/passwd", "job_profile_id": 100},
        {"source_url": "javascript:alert(1)", "job_profile_id": 100},
        {"source_url": "https://", "job_profile_id": 100},
        {"source_url": "https://a.example/x.mp4", "job_profile_id": "100"},
        {"source_url": "https://a.example/x.mp4", "job_profile_id": 100.0},
        {"source_url": "https://a.example/x.mp4", "job_profile_id": True},
        {"source_url": 5, "job_profile_id": 100},
        {"source_url": "https://a.example/x.mp4", "job_profile_id": 100, "ref_id": 7},
        [],
    ],
)
async def test_create_remote_job_rejects_malformed_input(api_factory, payload):
    async with api_factory(CONFIG) as api, raw(api) as http:
        r = await http.post(f"{PREFIX}/jobs", json=payload)
        assert r.status_code == 400
        assert r.json() == {"code": "BAD_REQUEST", "message": "Request parameter is invalid"}
        r = await http.post(
            f"{PREFIX}/jobs", content=b"{not json", headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 400
        assert api.store.stats()["jobs_created"] == 0


async def test_create_errors_through_the_client(api_factory):
    async with api_factory(CONFIG) as api, api.make_client() as client:
        with pytest.raises(NotFoundError) as e:
            await client.create_job("https://a.example/x.mp4", 999)
        assert (e.value.status, e.value.code, e.value.message) == (
            404,
            "JOB_PROFILE_NOT_FOUND",
            "Job profile not found",
        )
        with pytest.raises(PermanentApiError) as refused:
            await client.create_job("ftp://a.example/x.mp4", 100)
        assert (refused.value.status, refused.value.code) == (400, "BAD_REQUEST")
        assert refused.value.method == "POST" and refused.value.path.endswith("/jobs")


async def test_storage_not_found(api_factory, tmp_path):
    video = tmp_path / "v.mp4"
    video.write_bytes(b"x" * 100)
    async with api_factory(CONFIG.with_changes(storage_missing=True)) as api, api.make_client() as client:
        for call in (
            lambda: client.create_job("https://a.example/x.mp4", 100),
            lambda: client.upload_job(video),
        ):
            with pytest.raises(NotFoundError) as e:
                await call()
            assert (e.value.code, e.value.message) == ("STORAGE_NOT_FOUND", "Storage not found")


async def test_server_error_on_every_endpoint(api_factory):
    async with api_factory(CONFIG.with_changes(error_rate=1.0)) as api, api.make_client() as client:
        calls = [
            lambda: client.create_job("https://a.example/x.mp4", 100),
            lambda: client.get_job("abc"),
            lambda: client.list_jobs(),
            lambda: client.get_job_profile(100),
            lambda: client.list_job_profiles(),
            lambda: client.auth_token(CONFIG.email, CONFIG.password),
        ]
        for call in calls:
            with pytest.raises(ServerError) as e:
                await call()
            assert (e.value.status, e.value.code, e.value.message) == (
                500,
                "SERVER_ERROR",
                "An unexpected error has occurred",
            )
        assert api.store.stats()["jobs_created"] == 0


async def test_upload_streams_file_and_records_size_and_hash(api_factory, tmp_path):
    video = tmp_path / 'clip "one".mp4'
    data = bytes(range(256)) * 5000
    video.write_bytes(data)
    seen: list[int] = []
    async with api_factory(CONFIG) as api, api.make_client() as client:
        job = await client.upload_job(
            video, profile_id=102, ref_id="up-1", name="Clip", on_progress=seen.append
        )
        default = await client.upload_job(video)
    assert (
        job.source_type == "file"
        and job.job_profile_id == "102"
        and job.ref_id == "up-1"
        and job.name == "Clip"
    )
    assert default.job_profile_id == CONFIG.default_profile_id  # no Profile-Id: the default profile
    assert sum(seen) == len(data)
    rec = api.store.jobs[job.id]
    assert rec.upload_size == len(data) and rec.upload_sha256 == hashlib.sha256(data).hexdigest()
    assert rec.source_url == 'clip "one".mp4'


async def test_upload_errors(api_factory, tmp_path):
    video = tmp_path / "v.mp4"
    video.write_bytes(b"x" * 10)
    async with api_factory(CONFIG) as api, api.make_client() as client:
        with pytest.raises(NotFoundError) as e:
            await client.upload_job(video, profile_id=4242)
        assert e.value.code == "JOB_PROFILE_NOT_FOUND"
        async with raw(api) as http:
            no_file = await http.post(f"{PREFIX}/jobs", files={"other": ("a.mp4", b"abc")})
            no_name = await http.post(f"{PREFIX}/jobs", files={"source_file": (None, b"not a file")})
            broken = await http.post(
                f"{PREFIX}/jobs",
                content=b"garbage",
                headers={"Content-Type": "multipart/form-data; boundary=zz"},
            )
            no_boundary = await http.post(
                f"{PREFIX}/jobs", content=b"garbage", headers={"Content-Type": "multipart/form-data"}
            )
            wrong_type = await http.post(
                f"{PREFIX}/jobs", content=b"abc", headers={"Content-Type": "text/plain"}
            )
        for r in (no_file, no_name, broken, no_boundary):
            assert r.status_code == 400 and r.json() == {
                "code": "BAD_REQUEST",
                "message": "Invalid request parameters",
            }
        assert wrong_type.status_code == 400 and wrong_type.json()["code"] == "BAD_REQUEST"
        assert api.store.stats()["jobs_created"] == 0


async def test_get_job_by_id_and_ref_and_not_found(api_factory):
    async with api_factory(CONFIG) as api, api.make_client() as client:
        job = await client.create_job("https://a.example/x.mp4", 100, ref_id="weird/ref id?")
        assert (await client.get_job(job.id)).id == job.id
        assert (await client.get_job_by_ref("weird/ref id?")).id == job.id
        for missing in ("nope", "ref:nope"):
            with pytest.raises(NotFoundError) as e:
                await client.get_job(missing)
            assert (e.value.code, e.value.message) == ("JOB_NOT_FOUND", "The specified job does not exist")


async def test_list_jobs_pages_sorts_and_validates(api_factory):
    async with api_factory(CONFIG) as api, api.make_client() as client:
        created = [await client.create_job(f"https://a.example/{i}.mp4", 100) for i in range(7)]
        page1 = await client.list_jobs(limit=3, page=1, sort="created_at", order="ASC")
        assert [j.id for j in page1.items] == [j.id for j in created[:3]]
        everything = [j.id async for j in client.iter_jobs(limit=3, sort="created_at", order="DESC")]
        assert everything == [j.id for j in reversed(created)]
        newest = await client.list_jobs(limit=2, sort="updated_at", order="DESC")
        assert [j.id for j in newest.items] == [created[-1].id, created[-2].id]
        async with raw(api) as http:
            for params in (
                {"limit": 0},
                {"limit": 101},
                {"limit": "x"},
                {"limit": "-1"},
                {"page": 0},
                {"page": "1.5"},
                {"sort": "nope"},
                {"order": "asc"},
                {"order": "UP"},
            ):
                r = await http.get(f"{PREFIX}/jobs", params=params)
                assert r.status_code == 400, params
                assert r.json() == {"code": "BAD_REQUEST", "message": "Invalid request parameters"}
            body = (await http.get(f"{PREFIX}/jobs", params={"limit": 2})).json()
            assert set(body) == {"count", "jobs"} and len(body["jobs"]) == 2


async def test_job_profiles(api_factory):
    async with api_factory(CONFIG) as api, api.make_client() as client:
        by_id = await client.get_job_profile(101)
        by_ref = await client.get_job_profile("ref:hd")
        assert by_id == by_ref and by_id.id == "101"
        profiles = [p.id async for p in client.iter_job_profiles(limit=2, sort="id", order="ASC")]
        assert profiles == ["100", "101", "102", "103"]
        with pytest.raises(NotFoundError) as e:
            await client.get_job_profile("ref:missing")
        assert (e.value.code, e.value.message) == (
            "JOB_PROFILE_NOT_FOUND",
            "The specified job profile does not exist",
        )
        async with raw(api) as http:
            body = (await http.get(f"{PREFIX}/job_profiles", params={"limit": 30})).json()
            assert body["count"] == 4 and set(body["job_profiles"][0]) == PROFILE_KEYS
            r = await http.get(f"{PREFIX}/job_profiles", params={"order": "sideways"})
            assert r.status_code == 400 and r.json()["code"] == "BAD_REQUEST"


async def test_unauthorized_for_bad_key_token_or_merchant(api_factory):
    async with api_factory(CONFIG) as api:
        cases = [
            {"X-Streaks-Api-Key": "wrong", "Authorization": f"Bearer {CONFIG.token}"},
            {"Authorization": f"Bearer {CONFIG.token}"},
            {"X-Streaks-Api-Key": CONFIG.api_key, "Authorization": "Bearer wrong"},
            {"X-Streaks-Api-Key": CONFIG.api_key},
            {"X-Streaks-Api-Key": CONFIG.api_key, "Authorization": f"Basic {CONFIG.token}"},
        ]
        async with raw(api) as http:
            for headers in cases:
                for method, path in (
                    ("GET", "/jobs"),
                    ("GET", "/jobs/x"),
                    ("POST", "/jobs"),
                    ("GET", "/job_profiles"),
                    ("GET", "/job_profiles/100"),
                ):
                    http.headers.clear()
                    r = await http.request(method, PREFIX + path, headers=headers, json={})
                    assert r.status_code == 401, (headers, path)
                    assert r.json() == {"code": "UNAUTHORIZED", "message": "Authentication failed"}
            http.headers.update(
                {"X-Streaks-Api-Key": CONFIG.api_key, "Authorization": f"Bearer {CONFIG.token}"}
            )
            r = await http.get("/v1/merchants/someone-else/jobs")
            assert r.status_code == 401


async def test_auth_token_endpoint(api_factory):
    async with api_factory(CONFIG) as api, api.make_client() as client:
        token, expires = await client.auth_token(CONFIG.email, CONFIG.password)
        assert token and expires is not None
        with pytest.raises(AuthError) as e:
            await client.auth_token(CONFIG.email, "wrong")
        assert (e.value.status, e.value.code) == (401, "UNAUTHORIZED")
        assert "wrong" not in str(e.value)
        async with raw(api) as http:
            r = await http.post(f"{PREFIX}/auth-token/", json={"mail_address": CONFIG.email})
            assert r.status_code == 400 and r.json() == {
                "code": "BAD_REQUEST",
                "message": "Invalid request parameters",
            }
            ok = await http.post(
                f"{PREFIX}/auth-token/", json={"mail_address": CONFIG.email, "password": CONFIG.password}
            )
            assert set(ok.json()) == {"token", "expiration"} and DATE.match(ok.json()["expiration"])
            r = await http.get(f"{PREFIX}/jobs", headers={"Authorization": f"Bearer {ok.json()['token']}"})
            assert r.status_code == 200


async def test_emulator_stats_count_requests_and_duplicates(api_factory):
    async with api_factory(CONFIG) as api, api.make_client() as client:
        await client.create_job("https://a.example/x.mp4", 100, ref_id="dup")
        await client.create_job("https://a.example/x.mp4", 100, ref_id="dup")
        with pytest.raises(NotFoundError):
            await client.get_job("missing")
        async with raw(api) as http:
            stats = (await http.get("/_emulator/stats")).json()
    assert stats["requests"]["POST jobs"] == {"201": 2}
    assert stats["requests"]["GET jobs/:id"] == {"404": 1}
    assert stats["duplicate_ref_ids"] == {"dup": 2}
    assert stats["duplicate_sources"] == {"https://a.example/x.mp4": 2}
    assert stats["jobs_created"] == 2
