"""The command line starts without the heavy libraries, and the version has one source."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys

import batch_ingest
import pytest
from batch_ingest.cli import main
from click.testing import CliRunner

HEAVY = ("polars", "httpx", "httpcore", "asyncio", "starlette", "uvicorn", "tqdm")


def imported_after(code: str) -> list[str]:
    """The HEAVY modules a fresh interpreter holds after running `code`."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize(
    "code",
    [
        "import batch_ingest",
        "import batch_ingest.cli",
        "import batch_ingest.settings",
        "from batch_ingest import __version__, Settings, ConfigError",
        *(
            f"from batch_ingest.cli import main\ntry:\n    main({args!r})\nexcept SystemExit:\n    pass"
            for args in (["--help"], ["--version"], ["run", "--help"], ["config"])
        ),
    ],
)
def test_startup_loads_neither_polars_nor_httpx(code):
    assert imported_after(code) == []


def test_the_api_layer_does_not_import_the_settings_above_it():
    probe = "import sys, batch_ingest.api.client\nprint('batch_ingest.settings' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr


def test_public_names_load_on_first_use():
    assert "polars" in imported_after("from batch_ingest import run_manifest")
    assert "httpx" in imported_after("from batch_ingest.api import SmartStreamClient")
    for name in batch_ingest.__all__:
        assert getattr(batch_ingest, name) is not None, name
    assert set(batch_ingest.__all__) <= set(dir(batch_ingest))
    with pytest.raises(AttributeError):
        batch_ingest.RunAborted  # noqa: B018 - no longer exported


def test_one_version_for_the_package_the_command_and_the_user_agent():
    from batch_ingest.api.client import USER_AGENT

    version = importlib.metadata.version("batch-ingest")
    assert batch_ingest.__version__ == version
    assert USER_AGENT.startswith(f"batch-ingest/{version} ")
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"batch-ingest, version {version}"
