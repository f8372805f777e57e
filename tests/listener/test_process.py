"""The listener as a process: ``python -m listener`` / ``proxysync listen``, SIGTERM, disabled, config."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from messenger.server import MessengerServer
from proxysync import constants as C
from proxysync.redis_server import free_port
from tests.listener.conftest import BrokerQueues, wait_for

PROXYSYNC = str(Path(sys.executable).with_name("proxysync"))


def _env(**extra: Any) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("WEBSOCKET_CLIENT_", "IAM_", "LISTENER_"))
    }
    return env | {k: str(v) for k, v in extra.items()}


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


@pytest.mark.rabbitmq
def test_sigterm_unsubscribes_disconnects_drains_and_exits_zero(
    rabbit: dict[str, Any],
    redis_url: str,
    queue_prefix: str,
    queues: BrokerQueues,
    tmp_path: Path,
) -> None:
    port = free_port()
    env = _env(
        **rabbit,
        WEBSOCKET_CLIENT_TOPIC=f"{queue_prefix}-topic",
        LISTENER_HTTP_PORT=port,
        LISTENER_SPOOL_PATH=tmp_path / "spool.db",
        CELERY_BROKER_URL=redis_url,
    )
    env[C.QUEUE_PREFIX_ENV] = queue_prefix
    proc = subprocess.Popen(
        [sys.executable, "-m", "listener"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # Given a running listener, subscribed and ready
        wait_for(
            lambda: proc.poll() is not None or _status(f"http://127.0.0.1:{port}/readyz") == 200,
            what="/readyz 200",
        )
        assert proc.poll() is None
        wait_for(lambda: len(queues.all()) == 2, what="gap resync tasks")
        # When it gets SIGTERM
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    # Then it exits 0 after a clean STOMP goodbye and a drained dispatcher
    assert proc.returncode == 0, out
    assert "SIGTERM received" in out
    assert "Disconnected from the Messenger" in out
    assert "listener stopped (drained)" in out


def test_sigterm_against_the_standin_unsubscribes_with_a_disconnect_receipt(
    redis_url: str, queue_prefix: str, tmp_path: Path
) -> None:
    port = free_port()
    with MessengerServer() as messenger:
        env = _env(
            WEBSOCKET_CLIENT_BASEURL=messenger.url,
            LISTENER_HTTP_PORT=port,
            LISTENER_SPOOL_PATH=tmp_path / "spool.db",
            CELERY_BROKER_URL=redis_url,
            LOG_FORMAT="json",
        )
        env[C.QUEUE_PREFIX_ENV] = queue_prefix
        proc = subprocess.Popen(
            [PROXYSYNC, "listen"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        try:
            wait_for(
                lambda: proc.poll() is not None or _status(f"http://127.0.0.1:{port}/readyz") == 200,
                what="/readyz 200",
            )
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        counters = messenger.stats()["counters"]
    assert proc.returncode == 0, out
    assert counters["unsubscribes"] == 1
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert any("DISCONNECT receipt received" in doc["message"] for doc in lines), out
    assert any(doc["message"].startswith("[WS-Client] listener stopped (drained)") for doc in lines)


def test_disabled_says_so_and_exits_zero() -> None:
    result = subprocess.run(
        [PROXYSYNC, "listen"],
        env=_env(WEBSOCKET_CLIENT_ENABLED="false"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "WebSocket client is disabled" in result.stderr


def test_config_file_in_the_original_shape_is_read(tmp_path: Path) -> None:
    config = tmp_path / "application.yml"
    config.write_text(
        "websocket:\n  client:\n    enabled: false\n    baseurl: https://messenger.example.com\n"
        "    topic: proxy_config_events\n    retry-interval: 5000\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "listener", "--config", str(config)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "WebSocket client is disabled" in result.stderr


def test_invalid_settings_are_reported_not_a_traceback() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "listener"],
        env=_env(WEBSOCKET_CLIENT_TRANSPORT="carrier-pigeon"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "WEBSOCKET_CLIENT_TRANSPORT" in result.stderr and "Traceback" not in result.stderr
