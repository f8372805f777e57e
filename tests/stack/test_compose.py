"""docker-compose.yml and Dockerfile: validated by Debian's docker-compose (no container engine runs here)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import unavailable

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"


def compose_binary() -> str:
    found = shutil.which("docker-compose")
    if found is None:
        unavailable("docker-compose is not installed (apt-get install -y docker-compose); "
                    "docker-compose.yml was NOT validated")
    assert found is not None
    return found


def run_compose(
    *args: str, file: Path = COMPOSE, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("FLOWER_", "WEBSOCKET_", "CELERY_", "CACHE_", "PROXYSYNC_", "COMPOSE_"))}
    return subprocess.run([compose_binary(), "-f", str(file), *args], cwd=file.parent, env=base | (env or {}),
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    """The compose file as docker-compose resolves it (interpolated, anchors merged)."""
    result = run_compose("config", env={"FLOWER_BASIC_AUTH": "admin:secret"})
    assert result.returncode == 0, result.stderr
    loaded: dict[str, Any] = yaml.safe_load(result.stdout)
    return loaded


def test_compose_file_is_valid() -> None:
    # Given the compose file and Flower credentials, When docker-compose validates it, Then it passes.
    result = run_compose("config", "-q", env={"FLOWER_BASIC_AUTH": "admin:secret"})
    assert result.returncode == 0, f"docker-compose config -q failed:\n{result.stderr}"


def test_validator_rejects_an_invalid_file(tmp_path: Path) -> None:
    # The check above means something: the same command refuses a broken file.
    bad = tmp_path / "docker-compose.yml"
    bad.write_text("services:\n  worker:\n    image: x\n    restart: sometimes-maybe\n    ports: 12\n")
    assert run_compose("config", "-q", file=bad).returncode != 0


def test_flower_requires_basic_auth() -> None:
    # Without FLOWER_BASIC_AUTH the file refuses to resolve: Flower is never exposed unauthenticated.
    result = run_compose("config", "-q")
    assert result.returncode != 0
    assert "FLOWER_BASIC_AUTH" in result.stderr


def test_services_and_policies(config: dict[str, Any]) -> None:
    services = config["services"]
    assert set(services) == {"redis", "messenger", "listener", "worker", "flower"}
    for name, svc in services.items():
        assert svc.get("restart") in ("unless-stopped", "always", "on-failure"), name
        assert "healthcheck" in svc, name
    assert services["flower"]["environment"]["FLOWER_BASIC_AUTH"] == "admin:secret"
    assert services["listener"]["environment"]["WEBSOCKET_CLIENT_BASEURL"] == "http://messenger:8090"
    for name in ("listener", "worker", "flower"):
        env = services[name]["environment"]
        assert env["CELERY_BROKER_URL"] == "redis://redis:6379/0", name
        assert env["CACHE_REDIS_URL"] == "redis://redis:6379/0", name


def test_worker_scales(config: dict[str, Any]) -> None:
    # `--scale worker=4` needs no fixed container name and no host port on the worker.
    worker = config["services"]["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker
    assert worker["command"][:4] == ["celery", "-A", "tasks", "worker"]
    assert "-E" in worker["command"]  # task events for Flower


def test_healthchecks(config: dict[str, Any]) -> None:
    services = config["services"]

    def probe(name: str) -> str:
        return " ".join(services[name]["healthcheck"]["test"])

    assert "redis-cli ping" in probe("redis")
    assert "/readyz" in probe("listener")
    assert "/healthcheck" in probe("flower")
    assert "inspect ping" in probe("worker")


def test_dockerfile_installs_the_package_as_non_root() -> None:
    text = (ROOT / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert lines[0] == "FROM python:3.11-slim"
    assert any(line.startswith("RUN pip install") and line.endswith(" .") for line in lines)
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and not users[-1].startswith(("root", "0"))
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored
