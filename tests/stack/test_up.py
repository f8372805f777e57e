"""``proxysync up`` end to end: real Redis (machine or embedded), stand-in, listener, worker, Flower.

Every run gets its own cache prefix, queue prefix, broker key prefix and free ports, so it neither
consumes nor disturbs what other test sessions run on the same Redis.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import psutil
import pytest
import redis

from proxysync.redis_server import free_port, redis_answers

pytestmark = pytest.mark.slow

TYPES = ("CACHE_CLEAR_INVALID", "CACHE_DELETE_INVALID", "CACHE_CLEAR_SERVICE_INVALID", "ROUTES_REFRESH",
         "ALL_CACHE_INVALID")
UP = [sys.executable, "-m", "proxysync", "up"]
# The environment a developer may have set must not leak into the stack under test.
LEAKY = ("CACHE_", "CELERY_", "WEBSOCKET_", "LISTENER_", "FLOWER_", "MESSENGER_", "WORKER_", "PROXYSYNC_",
         "IAM_")


def stack_env(broker_url: str, cache_prefix: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(LEAKY)}
    tag = uuid.uuid4().hex[:10]
    return env | {
        "CELERY_BROKER_URL": broker_url,
        "CACHE_PREFIX": cache_prefix,
        "PROXYSYNC_QUEUE_PREFIX": f"pstest-q-{tag}",
        "CELERY_BROKER_KEYPREFIX": f"pstest-b-{tag}:",
        "MESSENGER_PORT": str(free_port()),
        "LISTENER_HTTP_PORT": str(free_port()),
        "FLOWER_PORT": str(free_port()),
        "WORKER_METRICS_PORT": str(free_port()),
    }


@pytest.fixture
def broker_cleanup(redis_client: redis.Redis) -> Iterator[list[str]]:
    """Key-prefix tags whose broker keys (queues, bindings, unacked) are removed after the test."""
    tags: list[str] = []
    yield tags
    for tag in tags:
        keys = list(redis_client.scan_iter(match=f"*{tag}*", count=1000))
        if keys:
            redis_client.unlink(*keys)


def run_up(args: list[str], env: dict[str, str], timeout: float = 120) -> tuple[int, str]:
    """Run ``proxysync up`` to completion; on a hang stop it the way a user would, so it cleans up."""
    proc = subprocess.Popen([*UP, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(proc)
        out, _ = proc.communicate()
        raise AssertionError(f"proxysync up {args} did not finish within {timeout}s:\n{out}") from None
    return proc.returncode, out


def stop(proc: subprocess.Popen[str]) -> None:
    """SIGTERM (up stops its children), SIGKILL only if that did not work."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def assert_all_applied(output: str) -> None:
    for t in TYPES:
        assert f"APPLIED {t}" in output, f"{t} not shown applied:\n{output}"
    assert "demo: all 5 event types applied" in output, output
    assert "NOT APPLIED" not in output


def test_demo_once_on_the_configured_redis(redis_url: str, prefix: str, broker_cleanup: list[str]) -> None:
    # Given a Redis answering at CELERY_BROKER_URL (the machine's, or the suite's embedded one)
    env = stack_env(redis_url, prefix)
    broker_cleanup += [env["PROXYSYNC_QUEUE_PREFIX"], env["CELERY_BROKER_KEYPREFIX"]]
    # When the demo runs once
    rc, out = run_up(["--demo", "--once", "--ready-timeout", "45", "--event-timeout", "15"], env)
    # Then it used that Redis, showed every event type applied and exited 0, stopping everything
    assert rc == 0, out
    assert "answered PING; using it" in out
    assert_all_applied(out)
    assert "stopped: all processes" in out
    assert re.findall(r"whole cache \d+ -> (\d+)", out)[-1] == "0"  # ALL_CACHE_INVALID emptied the cache
    assert redis.Redis.from_url(redis_url).xlen(f"{prefix}:feed") >= 5


def test_demo_once_starts_embedded_redis_when_none_answers() -> None:
    # Given nothing listening at the configured broker URL
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    assert not redis_answers(url)
    env = stack_env(url, f"pstest-{uuid.uuid4().hex[:12]}")
    # When the demo runs once
    rc, out = run_up(["--demo", "--once", "--ready-timeout", "45", "--event-timeout", "15"], env)
    # Then it started the embedded server, pointed everything at it, applied all five, and stopped it again
    assert rc == 0, out
    assert "starting the embedded redis-server" in out
    embedded = re.search(r"redis\s+(redis://\S+)\s+\(embedded, pid", out)
    assert embedded is not None, out
    assert_all_applied(out)
    assert not redis_answers(embedded.group(1))  # stopped with the rest


def gone(p: psutil.Process) -> bool:
    try:
        return not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class Running:
    """A ``proxysync up`` in the background whose output lines are collected as they come."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.lines: list[str] = []
        self._q: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._q.put(line.rstrip("\n"))
        self._q.put(None)

    def wait_for(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._q.get(timeout=0.2)
            except queue.Empty:
                continue
            if line is None:
                break
            self.lines.append(line)
            if text in line:
                return line
        raise AssertionError(f"{text!r} not seen within {timeout}s:\n" + "\n".join(self.lines))

    def output(self) -> str:
        while True:
            try:
                line = self._q.get(timeout=2)
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
        return "\n".join(self.lines)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_running_stack_status_restart_then_signal_leaves_no_process(sig: signal.Signals) -> None:
    # Given the stack running on an embedded Redis (so the Redis server is one of its children too)
    url = f"redis://127.0.0.1:{free_port()}/0"
    env = stack_env(url, f"pstest-{uuid.uuid4().hex[:12]}")
    flower = ["--flower"] if sig is signal.SIGINT else ["--no-flower"]  # both shapes, one Flower start
    up = Running([*UP, "--ready-timeout", "45", *flower], env)
    try:
        # `up` prints the environment `proxysync status` needs (the embedded Redis URL among it)
        hint = up.wait_for("proxysync status", 30)
        printed = dict(w.split("=", 1) for w in hint.split() if "=" in w)
        assert printed["CELERY_BROKER_URL"] != url  # nothing answered there: the embedded one is used
        up.wait_for("ready: all", 60)
        up.wait_for("running: Ctrl-C to stop", 5)
        tree = psutil.Process(up.proc.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in tree)
        for part in ("redis-server", "proxysync messenger", "-m listener", "tasks worker"):
            assert part in names, names
        assert len(tree) >= 5  # redis, messenger, listener, worker + its pool process (+ flower)

        if sig is signal.SIGTERM:
            # When a child dies (the listener, kill -9), Then it is reported, restarted and ready again
            listener = next(p for p in tree if "-m listener" in " ".join(p.cmdline()))
            listener.kill()
            up.wait_for("DIED: listener exited with code -9", 10)
            up.wait_for("restarting listener", 5)
            up.wait_for("ready again: listener", 30)
            tree += psutil.Process(up.proc.pid).children(recursive=True)

        # When `proxysync status --json` looks at it
        status_env = env | printed
        assert status_env["LISTENER_URL"] == f"http://127.0.0.1:{env['LISTENER_HTTP_PORT']}"
        st = subprocess.run([sys.executable, "-m", "proxysync", "status", "--json"], env=status_env,
                            capture_output=True, text=True, timeout=30, check=False)
        # Then it reports a healthy pipeline: listener ready, our worker online, empty queues, cache figures
        report = json.loads(st.stdout)
        assert st.returncode == 0, st.stdout + st.stderr
        assert report["healthy"] is True
        assert report["listener"]["ready"] is True
        assert report["workers"]["count"] == 1 and report["workers"]["online"][0].startswith("up-")
        assert set(report["broker"]["queues"]) == {f"{env['PROXYSYNC_QUEUE_PREFIX']}.invalidations",
                                                   f"{env['PROXYSYNC_QUEUE_PREFIX']}.routes"}
        assert all(n == 0 for n in report["broker"]["queues"].values())
        assert report["cache_entries"] == 0 and report["dead_letters"] == 0
        assert report["feed_length"] >= 1  # the listener's start-up resync reached the feed

        # When the stack gets the signal
        up.proc.send_signal(sig)
        rc = up.proc.wait(30)
    finally:
        stop(up.proc)
    out = up.output()
    # Then it exits 0 and every process it started is gone: no orphans
    assert rc == 0, out
    assert "stopped: all processes" in out
    deadline = time.monotonic() + 10
    alive = [p for p in tree if not gone(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in alive if not gone(p)]
    assert not alive, f"orphans: {[(p.pid, p.cmdline()) for p in alive]}\n{out}"
    assert not redis_answers(printed["CELERY_BROKER_URL"])


def test_not_ready_in_time_exits_non_zero_with_the_reason() -> None:
    # Given a ready timeout no stack can meet
    url = f"redis://127.0.0.1:{free_port()}/0"
    env = stack_env(url, f"pstest-{uuid.uuid4().hex[:12]}")
    rc, out = run_up(["--demo", "--once", "--ready-timeout", "0.3", "--no-flower"], env, timeout=60)
    # Then it says what was not ready, stops everything and exits non-zero
    assert rc == 1, out
    assert "NOT READY:" in out and "FAILED: not ready within 0.3s" in out
    assert "stopped: all processes" in out
    assert "demo:" not in out
    kept = re.search(r"logs kept in (\S+)/", out)
    assert kept is not None, out  # a failed run keeps its logs, and says where
    shutil.rmtree(kept.group(1))


def test_status_when_nothing_runs() -> None:
    # Given no listener, no broker and no cache at the configured addresses
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(LEAKY)} | {
        "CELERY_BROKER_URL": f"redis://:hunter2@127.0.0.1:{port}/0", "LISTENER_URL": f"http://127.0.0.1:{port}"}
    # When status runs
    result = subprocess.run([sys.executable, "-m", "proxysync", "status", "--json"], env=env,
                            capture_output=True, text=True, timeout=30, check=False)
    # Then it answers (every probe reports its error), says unhealthy, exits 1 and never prints the password
    report = json.loads(result.stdout)
    assert result.returncode == 1
    assert report["healthy"] is False
    assert report["listener"]["ready"] is False and report["listener"]["healthz"] is None
    assert report["broker"]["error"] and report["cache"]["error"]
    assert report["workers"]["count"] == 0
    assert "hunter2" not in result.stdout
    table = subprocess.run([sys.executable, "-m", "proxysync", "status"], env=env,
                           capture_output=True, text=True, timeout=30, check=False)
    assert table.returncode == 1 and "DOWN" in table.stdout and "healthy" in table.stdout
