"""Object-storage sources (`s3://`): syntax, checks through the store's API, a URL signed per attempt
that no artifact ever holds, and an expired signature that `retry` mends by signing again.

A real S3 (moto's server) runs on loopback in this process; the emulator fetches the signed URLs from
it in `--fetch-sources` mode, as the platform would.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from batch_ingest.emulator import EmulatorConfig
from batch_ingest.objects import ObjectStores, names_object, parse_object_url, scrub_signed, without_query

from .helpers import FAST, FLAGS, QUICK_DOUBT, report_of, run_cli, summary_of
from .media import make_mp4

ACCESS_KEY = "AKIAQUITESECRETKEY01"
SECRET_KEY = "s3cr3t/for+the+tests"
SIGNATURE_VALUE = re.compile(r"[0-9a-f]{64}")  # a SigV4 signature's value
SIGNATURE = re.compile(
    r"X-Amz-Signature|X-Goog-Signature|X-Amz-Credential|" + ACCESS_KEY + "|" + re.escape(SECRET_KEY)
)


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A loopback S3 holding bucket `videos`: good.mp4 (a real video), empty.mp4 (0 bytes); the env to reach it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
    }
    video = make_mp4(tmp_path_factory.mktemp("s3") / "good.mp4")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        import httpx
        import obstore

        httpx.put(f"{env['AWS_ENDPOINT_URL']}/videos").raise_for_status()
        stores = ObjectStores()
        store = stores.store(parse_object_url("s3://videos/x"))
        obstore.put(store, "good.mp4", video.read_bytes())
        obstore.put(store, "in folder/good copy.mp4", video.read_bytes())
        obstore.put(store, "empty.mp4", b"")
    yield env
    server.stop()


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("s3://videos/a/b.mp4", None),
        ("gs://my_bucket.example/v.mp4", None),
        ("az://container-1/v.mp4", None),
        ("s3://Videos/v.mp4", "not a valid S3 bucket name"),
        ("s3://ab/v.mp4", "not a valid S3 bucket name"),
        ("s3://10.0.0.1/v.mp4", "not a valid S3 bucket name"),
        ("s3:///v.mp4", "no bucket"),
        ("s3://videos", "no object key"),
        ("s3://videos/", "no object key"),
        ("s3://videos/folder/", "names a folder"),
        ("s3://videos/Episode #3 what?.mp4", None),  # ? and # belong to the key, as in `aws s3`
        ("s3://videos//lead.mp4", "empty, '.' or '..' segment"),
        ("s3://videos/a/../b.mp4", "empty, '.' or '..' segment"),
        ("s3://videos/a\tb.mp4", "control character"),
        ("s3://videos/v.mp4?versionId=3", "object version"),
        ("az://a--b/v.mp4", "not a valid Azure container name"),
    ],
)
def test_object_urls_are_checked_for_syntax(source, problem):
    if problem is None:
        ref = parse_object_url(source)
        assert str(ref) == source
    else:
        with pytest.raises(ValueError, match=problem):
            parse_object_url(source)


def test_validate_rejects_malformed_object_urls_and_counts_the_objects(tmp_path):
    manifest = manifest_of(
        tmp_path,
        [
            {"source": "s3://videos/good.mp4", "profile": "100"},
            {"source": "s3://Bad_Bucket/v.mp4", "profile": "100"},
            {"source": "s3://videos/", "profile": "100"},
            {"source": "gs://videos/v.mp4", "profile": ""},
            {"source": "ftp://host/v.mp4", "profile": "100"},
        ],
    )
    result = run_cli(["validate", str(manifest)])
    assert result.exit_code == 1, result.output
    assert "1 objects" in result.output
    assert "row 2" in result.output and "not a valid S3 bucket name" in result.output
    assert "row 3" in result.output and "no object key" in result.output
    assert "row 4" in result.output and "needs a job profile" in result.output
    assert "s3://, gs:// or az://" in result.output  # the unsupported scheme's message names them


def test_check_sources_asks_the_store_for_each_object(tmp_path, s3):
    manifest = manifest_of(
        tmp_path,
        [
            {"source": "s3://videos/good.mp4", "profile": "100"},
            {"source": "s3://videos/in folder/good copy.mp4", "profile": "100"},
            {"source": "s3://videos/missing.mp4", "profile": "100"},
            {"source": "s3://videos/empty.mp4", "profile": "100"},
            {"source": "s3://no-such-bucket/v.mp4", "profile": "100"},
        ],
    )
    result = run_cli(["validate", str(manifest), "--check-sources", "--json"], s3)
    assert result.exit_code == 1, result.output
    import json

    plan = json.loads(result.output)
    assert plan["objects"] == 2 and plan["rejected"] == 3
    size = Path(make_mp4(tmp_path / "same.mp4")).stat().st_size
    assert plan["fetch_bytes"] == 2 * size  # what the store said, for the two good objects
    codes = {r["row"]: r["error_code"] for r in plan["rejected_rows"]}
    assert codes == {3: "SOURCE_NOT_FOUND", 4: "SOURCE_NOT_VIDEO", 5: "SOURCE_NOT_FOUND"}
    assert plan["rejected_by_code"] == {"SOURCE_NOT_FOUND": 2, "SOURCE_NOT_VIDEO": 1}
    assert not SIGNATURE.search(result.output)


def test_a_signed_url_names_its_object_and_its_lifetime_is_capped(s3, monkeypatch):
    for name, value in s3.items():
        monkeypatch.setenv(name, value)
    url = asyncio.run(ObjectStores(presign_ttl_s=60).sign("s3://videos/Episode #3.mp4"))
    assert "X-Amz-Expires=60&" in url and "X-Amz-Signature=" in url
    assert without_query(url) == f"{s3['AWS_ENDPOINT_URL']}/videos/Episode%20%233.mp4"
    assert names_object(url, "s3://videos/Episode #3.mp4")
    assert ObjectStores(presign_ttl_s=30 * 86400).presign_ttl.total_seconds() == 7 * 86400


def test_an_api_error_that_echoes_the_signed_url_is_scrubbed(s3, monkeypatch):
    for name, value in s3.items():
        monkeypatch.setenv(name, value)
    url = asyncio.run(ObjectStores().sign("s3://videos/good.mp4"))
    import html
    from urllib.parse import quote

    for echo in (url, quote(url, safe=""), html.escape(url), url.split("://", 1)[1]):
        scrubbed = scrub_signed(f"Request parameter is invalid: {echo}", url)
        assert not SIGNATURE_VALUE.search(scrubbed) and ACCESS_KEY not in scrubbed, scrubbed


def test_objects_are_signed_fetched_by_the_platform_and_no_signature_is_kept(tmp_path, s3, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST, fetch_sources=True))
    env = {**server.env(), **s3}
    manifest = manifest_of(
        tmp_path,
        [
            {"source": "s3://videos/good.mp4", "profile": "100", "ref_id": "a"},
            {"source": "s3://videos/in folder/good copy.mp4", "profile": "100", "ref_id": "b"},
            {"source": "s3://videos/missing.mp4", "profile": "100", "ref_id": "c"},
        ],
    )
    run_dir = tmp_path / "run"
    result = run_cli(
        ["run", str(manifest), "--report-dir", str(run_dir), "--html", str(tmp_path / "r.html"), *FLAGS], env
    )
    report = report_of(run_dir).sort("row")
    assert report["outcome"].to_list() == ["succeeded", "succeeded", "failed"], result.output
    assert report["source"].to_list()[0] == "s3://videos/good.mp4"
    assert report["source_type"].unique().to_list() == ["object"]
    # The platform got a signed URL for the object (and fetched it); the run kept none of it.
    sent = {job["ref_id"]: job["source_url"] for job in server.jobs()}
    assert "X-Amz-Signature=" in sent["a"] and without_query(sent["b"]).endswith(
        "/videos/in%20folder/good%20copy.mp4"
    )
    assert_no_signature(run_dir, tmp_path / "r.html", result.output)


def test_an_expired_signature_fails_with_its_code_and_retry_signs_again(tmp_path, s3, emulator_server):
    # The platform's queue (120 s on its clock, 1.2 s here) outlasts a 60 s signature.
    server = emulator_server(
        EmulatorConfig(**FAST).with_changes(
            queue_seconds=120, encode_seconds=10, time_scale=100, fetch_sources=True
        )
    )
    env = {**server.env(), **s3}
    manifest = manifest_of(tmp_path, [{"source": "s3://videos/good.mp4", "profile": "100"}])
    run_dir = tmp_path / "run"
    first = run_cli(["run", str(manifest), "--report-dir", str(run_dir), "--presign-ttl", "60", *FLAGS], env)
    assert first.exit_code == 1, first.output
    row = report_of(run_dir).row(0, named=True)
    assert row["outcome"] == "failed" and row["error_code"] == "SIGNATURE_EXPIRED", row
    assert "--presign-ttl" in row["error_message"]
    # What `report` suggests next signs for longer: the same lifetime would expire again.
    review = run_cli(["report", str(run_dir)])
    assert f"batch-ingest retry {run_dir} --only failed --presign-ttl 240" in review.output, review.output
    again = tmp_path / "again"
    retried = run_cli(
        ["retry", str(run_dir), "--report-dir", str(again), "--presign-ttl", "3600", *FLAGS], env
    )
    assert retried.exit_code == 0, retried.output
    assert report_of(again)["outcome"].to_list() == ["succeeded"]
    urls = [job["source_url"] for job in server.jobs()]
    assert len(urls) == 2 and urls[0] != urls[1]  # signed anew, not the expired URL again
    assert "X-Amz-Expires=60&" in urls[0] and "X-Amz-Expires=3600&" in urls[1]
    assert summary_of(again)["settings"]["presign_ttl"] == 3600
    assert_no_signature(run_dir, again, first.output + retried.output)


def test_a_resumed_run_signs_again(tmp_path, s3, emulator_server):
    """Held rows are signed when the resume sends them: no signature was stored to reuse."""
    server = emulator_server(EmulatorConfig(**FAST, fetch_sources=True))
    env = {**server.env(), **s3}
    manifest = manifest_of(
        tmp_path,
        [{"source": "s3://videos/good.mp4", "profile": "100", "ref_id": f"r{i}"} for i in range(4)],
    )
    run_dir = tmp_path / "run"
    canary = run_cli(["run", str(manifest), "--report-dir", str(run_dir), "--limit", "1", *FLAGS], env)
    assert canary.exit_code == 0, canary.output
    rest = run_cli(["resume", str(run_dir), "--all", *FLAGS], env)
    assert rest.exit_code == 0, rest.output
    assert report_of(run_dir)["outcome"].to_list() == ["succeeded"] * 4
    assert len(server.jobs()) == 4 and all("X-Amz-Signature=" in j["source_url"] for j in server.jobs())
    assert_no_signature(run_dir, canary.output + rest.output)


def test_objects_that_cannot_be_signed_stop_the_run_before_anything_is_sent(
    tmp_path, emulator_server, monkeypatch
):
    """No credentials anywhere: `run` exits 2 with the variables to set, and no run folder or job;
    `validate` warns (the run may be meant for a machine that has them)."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_METADATA_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: no instance role
    server = emulator_server(EmulatorConfig(**FAST))
    manifest = manifest_of(
        tmp_path,
        [
            {"source": "s3://videos/good.mp4", "profile": "100"},
            {"source": "s3://videos/b.mp4", "profile": "100"},
        ],
    )
    run_dir = tmp_path / "run"
    result = run_cli(["run", str(manifest), "--report-dir", str(run_dir), *FLAGS], server.env())
    assert result.exit_code == 2, result.output
    assert "cannot sign a URL for s3://videos" in result.output and "AWS_ACCESS_KEY_ID" in result.output
    assert "nothing was sent" in result.output and not run_dir.exists() and server.jobs() == []
    checked = run_cli(["validate", str(manifest)])
    assert checked.exit_code == 0 and "warning: cannot sign a URL for s3://videos" in checked.output
    # A canary that takes only a URL row is not stopped by the objects it holds back.
    mixed = tmp_path / "mixed.csv"
    mixed.write_text("source,profile\nhttps://cdn.example.com/a.mp4,100\ns3://videos/good.mp4,100\n")
    canary = run_cli(
        ["run", str(mixed), "--report-dir", str(tmp_path / "c"), "--limit", "1", *FLAGS], server.env()
    )
    assert canary.exit_code == 0, canary.output
    assert report_of(tmp_path / "c")["outcome"].to_list() == ["succeeded", "held"]


def test_the_shared_credentials_file_is_read_when_the_environment_has_no_keys(tmp_path, s3, monkeypatch):
    (tmp_path / "credentials").write_text(
        f"[default]\naws_access_key_id = WRONG\n\n[media]\naws_access_key_id = {ACCESS_KEY}\n"
        f"aws_secret_access_key = {SECRET_KEY}\n"
    )
    (tmp_path / "config").write_text("[profile media]\nregion = eu-west-3\n")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_PROFILE", "media")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3["AWS_ENDPOINT_URL"])
    url = asyncio.run(ObjectStores().sign("s3://videos/good.mp4"))
    assert f"X-Amz-Credential={ACCESS_KEY}%2F" in url and "%2Feu-west-3%2Fs3%2F" in url


def manifest_of(folder: Path, rows: list[dict[str, str]]) -> Path:
    path = folder / "manifest.csv"
    pl.DataFrame(rows).write_csv(path)
    return path


def assert_no_signature(*places: Path | str) -> None:
    """No file under these folders, no file named, and no text given holds a signature or the key."""
    for place in places:
        if isinstance(place, Path):
            files = [place] if place.is_file() else [p for p in place.rglob("*") if p.is_file()]
            for path in files:
                data = path.read_bytes()
                if path.suffix == ".parquet":
                    data = pl.read_parquet(path).write_csv().encode()
                text = data.decode("utf-8", "replace")
                assert not SIGNATURE.search(text), f"{path} holds a signature or the access key"
        else:
            assert not SIGNATURE.search(place), "the command's output holds a signature or the access key"


@pytest.mark.parametrize(
    ("url", "matches"),
    [
        ("http://127.0.0.1:9000/videos/in%20folder/good%20copy.mp4?X-Amz-Signature=x", True),
        ("https://videos.s3.eu-west-3.amazonaws.com/in%20folder/good%20copy.mp4?X-Amz-Signature=x", True),
        ("https://s3.amazonaws.com/videos/in%20folder/good%20copy.mp4", True),
        ("https://s3.amazonaws.com/other/in%20folder/good%20copy.mp4", False),
        ("https://s3.amazonaws.com/videos/good%20copy.mp4", False),
        ("https://s3.amazonaws.com/videos/in%20folder/good%20copy.mp4.bak", False),
        ("https://s3.amazonaws.com/other/videos/in%20folder/good%20copy.mp4", False),
    ],
)
def test_without_a_signature_an_echo_is_matched_by_bucket_and_key(url, matches):
    """A create in doubt whose row can no longer be signed is still looked up, not sent twice."""
    assert names_object(url, "s3://videos/in folder/good copy.mp4") is matches


def test_an_echo_is_matched_by_the_stores_own_address_first():
    """A store behind a path prefix (Azurite's account segment, a gateway's /s3): the exact address
    matches; bucket and key still match the same object through another spelling."""
    address = "http://127.0.0.1:10000/devstoreaccount1/media/clip.mp4"
    echo = address + "?se=2026-11-28T00%3A00%3A00Z&sig=abc"
    assert names_object(echo, "az://media/clip.mp4", address)
    assert names_object(
        "http://localhost:10000/devstoreaccount1/media/clip.mp4?sig=1", "az://media/clip.mp4", address
    )
    assert not names_object("http://127.0.0.1:10000/other/media/clip.mp4", "az://media/clip.mp4", address)
    assert not names_object("http://127.0.0.1:10000/devstoreaccount1/media/clip.mp4", "az://media/clip.mp4")
    gateway = "https://gw.example.com/s3/media/clip.mp4"
    assert names_object(
        "https://GW2.example.com/s3/media/clip.mp4?X-Amz-Signature=1", "s3://media/clip.mp4", gateway
    )
    assert not names_object("https://gw.example.com/s3/media/other.mp4", "s3://media/clip.mp4", gateway)
    hosted = "https://media.s3.eu-west-3.amazonaws.com/clip.mp4"
    assert names_object("https://media.s3.amazonaws.com/clip.mp4?x=1", "s3://media/clip.mp4", hosted)
    # Known and accepted: a bucket `media.v2` with the same key, virtual-hosted, cannot be told apart
    # by path and the first label; it would also have to be made in the same minutes, same profile.
    assert names_object("https://media.v2.s3.amazonaws.com/clip.mp4", "s3://media/clip.mp4", hosted)


def test_a_create_in_doubt_is_adopted_by_its_address_not_sent_twice(tmp_path, s3, emulator_server):
    """Every create loses its answer: the job is found by the object's address (the echo's signature
    differs from any new one), rows without a ref_id included."""
    server = emulator_server(EmulatorConfig(**FAST, fetch_sources=True, drop_after_create_rate=1.0))
    manifest = manifest_of(
        tmp_path,
        [
            {"source": "s3://videos/good.mp4", "profile": "100", "ref_id": ""},
            {"source": "s3://videos/in folder/good copy.mp4", "profile": "100", "ref_id": "copy"},
        ],
    )
    run_dir = tmp_path / "run"
    result = run_cli(
        ["run", str(manifest), "--report-dir", str(run_dir), *FLAGS], {**server.env(), **s3, **QUICK_DOUBT}
    )
    assert result.exit_code == 0, result.output
    assert report_of(run_dir)["outcome"].to_list() == ["succeeded", "succeeded"]
    assert len(server.jobs()) == 2 and summary_of(run_dir)["adopted_after_doubt"] == 2
    assert_no_signature(run_dir, result.output)


def test_an_encode_that_fails_after_it_started_is_not_blamed_on_the_signature(tmp_path, s3, emulator_server):
    """The job was seen encoding (so the platform had fetched the source) and failed after the
    signature's end: an encode failure, not SIGNATURE_EXPIRED."""
    server = emulator_server(
        EmulatorConfig(**FAST).with_changes(
            queue_seconds=1,
            encode_seconds=120,
            jitter=0,
            time_scale=100,
            failure_rate=1.0,
            fetch_sources=True,
        )
    )
    manifest = manifest_of(tmp_path, [{"source": "s3://videos/good.mp4", "profile": "100"}])
    run_dir = tmp_path / "run"
    result = run_cli(
        ["run", str(manifest), "--report-dir", str(run_dir), "--presign-ttl", "60", *FLAGS],
        {**server.env(), **s3},
    )
    assert result.exit_code == 1, result.output
    assert report_of(run_dir)["error_code"].to_list() == ["ENCODE_FAILED"]


def test_a_store_that_cannot_be_reached_fails_its_rows_at_once_not_one_timeout_each(tmp_path, monkeypatch):
    """Nothing listens at the endpoint: the first row of the bucket finds out (within obstore's
    bounded retries), the rest of that bucket are told the same at once."""
    from batch_ingest.emulator.server import free_port

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    stores = ObjectStores(s3_endpoint=f"http://127.0.0.1:{free_port()}")
    from batch_ingest.sources import check_objects

    sources = [(i, f"s3://videos/v{i}.mp4") for i in range(1, 41)]
    checks = asyncio.run(check_objects(stores, sources, concurrency=4))
    assert [c.code for c in checks] == ["SOURCE_UNREACHABLE"] * 40
    assert "check the endpoint, the region and the network" in (checks[-1].reason or "")
    assert len(stores._head_failures) == 1


def test_a_resume_without_credentials_ends_the_unsigned_rows_as_errors_and_retry_mends_them(
    tmp_path, s3, emulator_server, monkeypatch
):
    """The canary ran where the credentials were; `resume --all` runs where they are not: the held
    rows end `error` SOURCE_SIGN_FAILED (no create, no crash), and a retry with them sends those."""
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_METADATA_ENDPOINT", "http://127.0.0.1:9")
    server = emulator_server(EmulatorConfig(**FAST, fetch_sources=True))
    manifest = manifest_of(
        tmp_path, [{"source": "s3://videos/good.mp4", "profile": "100", "ref_id": f"r{i}"} for i in range(3)]
    )
    run_dir = tmp_path / "run"
    canary = run_cli(
        ["run", str(manifest), "--report-dir", str(run_dir), "--limit", "1", *FLAGS], {**server.env(), **s3}
    )
    assert canary.exit_code == 0, canary.output
    without = {**server.env(), "AWS_ENDPOINT_URL": s3["AWS_ENDPOINT_URL"]}
    rest = run_cli(["resume", str(run_dir), "--all", *FLAGS], without)
    assert rest.exit_code == 1, rest.output
    report = report_of(run_dir).sort("row")
    assert report["outcome"].to_list() == ["succeeded", "error", "error"]
    assert report["error_code"].to_list()[1:] == ["SOURCE_SIGN_FAILED"] * 2 and len(server.jobs()) == 1
    again = tmp_path / "again"
    retried = run_cli(["retry", str(run_dir), "--report-dir", str(again), *FLAGS], {**server.env(), **s3})
    assert retried.exit_code == 0, retried.output
    assert report_of(again)["outcome"].to_list() == ["succeeded", "succeeded"] and len(server.jobs()) == 3


def test_the_same_manifest_tomorrow_with_skip_existing_sends_no_object_twice(tmp_path, s3, emulator_server):
    server = emulator_server(EmulatorConfig(**FAST, fetch_sources=True))
    env = {**server.env(), **s3}
    manifest = manifest_of(
        tmp_path,
        [
            {"source": "s3://videos/good.mp4", "profile": "100", "ref_id": "good"},
            {"source": "s3://videos/in folder/good copy.mp4", "profile": "100", "ref_id": "copy"},
        ],
    )
    today = run_cli(["run", str(manifest), "--report-dir", str(tmp_path / "today"), *FLAGS], env)
    assert today.exit_code == 0, today.output
    tomorrow = run_cli(
        ["run", str(manifest), "--report-dir", str(tmp_path / "tomorrow"), "--skip-existing", *FLAGS], env
    )
    assert tomorrow.exit_code == 0, tomorrow.output
    assert report_of(tmp_path / "tomorrow")["outcome"].to_list() == ["skipped", "skipped"]
    assert len(server.jobs()) == 2
    assert_no_signature(tmp_path / "today", tmp_path / "tomorrow", today.output + tomorrow.output)
