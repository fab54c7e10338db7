"""The settings' one declaration (`batch_ingest.settings.SETTINGS`) and what is generated from it."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from batch_ingest.cli import main
from batch_ingest.errors import ConfigError
from batch_ingest.settings import SECRET_FIELDS, SETTINGS, Secret, Settings, resolve_settings
from click.testing import CliRunner

README = Path(__file__).resolve().parent.parent / "README.md"
HEADER = "| config key | flag | environment | default | meaning |"


def settings_table() -> str:
    """The README's settings table, generated from the declaration."""
    lines = [HEADER, "|---|---|---|---|---|"]
    for spec in SETTINGS:
        flag = f"`{spec.option}`" if spec.flag else ""
        default = spec.shown_default(code=lambda text: f"`{text}`")
        lines.append(f"| `{spec.name}` | {flag} | `{spec.env}` | {default} | {spec.meaning} |")
    return "\n".join(lines)


def readme_table() -> str:
    lines = README.read_text(encoding="utf-8").splitlines()
    start = lines.index(HEADER)
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return "\n".join(lines[start:end])


def test_readme_settings_table_is_the_declaration():
    expected = settings_table()
    assert readme_table() == expected, (
        "README.md's settings table differs from batch_ingest/settings.py; replace it with:\n\n" + expected
    )


@pytest.mark.parametrize(
    ("scope", "commands"),
    [
        ("work", ("run", "resume", "retry", "collect", "config")),
        ("plan", ("validate",)),
        ("api", ("profiles", "jobs")),
    ],
)
def test_each_command_takes_the_flags_of_the_settings_it_uses_and_no_others(scope, commands):
    every = {spec.option for spec in SETTINGS if spec.flag}
    used = {spec.option for spec in SETTINGS if spec.flag and spec.used_by(scope)}
    for name in commands:
        options = {opt for p in main.commands[name].params if isinstance(p, click.Option) for opt in p.opts}
        assert used <= options, name
        assert not (every - used) & options, name  # `profiles --concurrency` would be ignored: not offered
        assert not {o for o in options if o.startswith(("--connect", "--read-timeout", "--in-doubt"))}
    assert "--rate" in used and "--api-key" in used
    if scope == "api":
        assert "--job-timeout" not in used and "--bwlimit" not in used and "--notify" not in used


def test_every_setting_resolves_from_its_environment_variable_and_its_config_key():
    samples = {
        "api_url": "https://api.example.com",
        "s3_endpoint": "http://127.0.0.1:9000",
        "rate_store": "redis://127.0.0.1:6379/0",
        "bwlimit": "1M",
        "encode_status_map": "succeeded=2;failed=3",
        "allow_http": "true",
        "notify": "https://hooks.example.com/batch",
    }
    for spec in SETTINGS:
        raw = samples.get(spec.name, "7")
        from_env = getattr(resolve_settings(env={spec.env: raw}), spec.name)
        from_config = getattr(resolve_settings(env={}, config={spec.name: raw}), spec.name)
        assert from_env == from_config != spec.default, spec.name
        assert isinstance(from_env, Secret) == spec.secret, spec.name


def test_defaults_are_the_declared_ones_and_secrets_are_masked():
    settings = resolve_settings(env={})
    assert settings == Settings()
    assert [(s.name, s.default) for s in SETTINGS] == [(k, getattr(settings, k)) for k in settings.masked()]
    assert {"api_key", "token", "password", "notify_secret"} == SECRET_FIELDS
    shown = resolve_settings(env={"SMARTSTREAM_TOKEN": "t0ken", "SMARTSTREAM_EMAIL": "a@b.c"}).masked()
    assert shown["token"] == shown["email"] == "********" and shown["api_key"] == ""
    store = resolve_settings(env={"SMARTSTREAM_RATE_STORE": "redis://:pa55@redis:6379/1"}).masked()
    assert "pa55" not in store["rate_store"] and store["rate_store"].endswith("@redis:6379/1")


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        ("concurrency", "257", "at most 256"),
        ("upload_concurrency", "0", "at least 1"),
        ("burst", "1001", "at most 1000"),
        ("connect_timeout", "0", "at least 0.001"),
        ("rate", "nan", "finite"),
        ("bwlimit", "fast", "bandwidth"),
        ("allow_http", "maybe", "true or false"),
    ],
)
def test_range_checks_come_from_the_declaration(name, raw, message):
    env_name = "SMARTSTREAM_" + name.upper()
    with pytest.raises(ConfigError, match=message) as e:
        resolve_settings(env={env_name: raw})
    assert env_name in str(e.value)


def test_a_flag_help_names_its_variable_and_default_and_warns_about_secrets():
    result = CliRunner().invoke(main, ["config", "--help"], terminal_width=1000)
    text = " ".join(result.output.split())
    assert "[env SMARTSTREAM_RATE; default: 50]" in text
    assert "(1 to 256) [env SMARTSTREAM_CONCURRENCY; default: 8]" in text
    assert "API key [env SMARTSTREAM_API_KEY; required to reach the API]. Flags show in `ps`" in text


def test_config_prints_every_setting_in_declared_order(monkeypatch):
    monkeypatch.setenv("SMARTSTREAM_API_KEY", "k3y")
    result = CliRunner().invoke(main, ["config", "--rate", "120"])
    assert result.exit_code == 0
    lines = result.output.splitlines()[1:]
    assert [line.split(" = ")[0] for line in lines] == [s.name for s in SETTINGS]
    shown = {line.split(" = ")[0]: " ".join(line.split(" = ", 1)[1].split()) for line in lines}
    assert shown["rate"] == "120.0 # flag --rate" and "k3y" not in result.output
    assert shown["api_key"] == "******** # env SMARTSTREAM_API_KEY" and shown["concurrency"] == "8 # default"


def test_config_says_where_each_value_came_from(monkeypatch, tmp_path):
    cfg = tmp_path / "ops.toml"
    cfg.write_text('rate = 40\nconcurrency = 3\nmerchant_id = "m1"\n')
    monkeypatch.setenv("SMARTSTREAM_CONCURRENCY", "5")
    result = CliRunner().invoke(main, ["config", "--config", str(cfg), "--merchant-id", "m2", "--json"])
    assert result.exit_code == 0, result.output
    import json

    info = json.loads(result.output)["settings"]
    assert info["rate"] == {"value": 40.0, "from": f"file {cfg}"}
    assert info["concurrency"] == {"value": 5, "from": "env SMARTSTREAM_CONCURRENCY"}  # env over file
    assert info["merchant_id"] == {"value": "m2", "from": "flag --merchant-id"}  # flag over file
    assert info["burst"]["from"] == "default"
