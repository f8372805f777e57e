"""The Celery app's declared policy: every proxysync task on the one base class, JSON only, acks late."""

from __future__ import annotations

import pytest

import celeryconfig
from proxysync import constants as C
from tasks import app, create_app
from tasks.base import ProxysyncTask, check_time
from tasks.errors import TRANSIENT, BadArgumentsError
from tasks.settings import WorkerSettings


def test_every_proxysync_task_uses_the_policy_base() -> None:
    ours = {name: task for name, task in app.tasks.items() if name.startswith("proxysync.")}
    assert set(ours) == set(C.ALL_TASKS)
    base = app.proxysync_base
    for name, task in ours.items():
        assert isinstance(task, base) and isinstance(task, ProxysyncTask), name
        assert task.autoretry_for == TRANSIENT, name
        assert task.acks_late and task.reject_on_worker_lost, name
        assert task.retry_backoff and task.retry_backoff_max and task.retry_jitter, name
        assert task.max_retries == WorkerSettings().task_max_retries, name
        assert task.ignore_result, name


def test_policy_follows_settings() -> None:
    custom = create_app(WorkerSettings(task_max_retries=2, task_retry_backoff=3, task_retry_backoff_max=7,
                                       task_retry_jitter=False))
    task = custom.tasks[C.TASK_CLEAR]
    got = (task.max_retries, task.retry_backoff, task.retry_backoff_max, task.retry_jitter)
    assert got == (2, 3, 7, False)
    assert app.tasks[C.TASK_CLEAR].max_retries != 2  # the other app is untouched


def test_celery_settings_json_only_acks_late_small_prefetch() -> None:
    conf = app.conf
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"
    assert conf.result_accept_content == ["json"] and conf.event_serializer == "json"
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 4  # short tasks: a few reserved per process, not one
    assert conf.broker_connection_retry_on_startup
    assert conf.worker_send_task_events and conf.task_send_sent_event
    assert conf.task_ignore_result is (conf.result_backend is None)


def test_queues_and_routes_split_invalidations_from_refresh() -> None:
    r = celeryconfig.routing("pfx")
    assert [q.name for q in r["task_queues"]] == ["pfx.invalidations", "pfx.routes"]
    assert r["task_routes"][C.TASK_ROUTES_REFRESH]["queue"] == "pfx.routes"
    assert r["task_routes"]["proxysync.cache.*"]["queue"] == "pfx.invalidations"
    assert r["task_default_queue"] == "pfx.invalidations"


def test_transport_options_per_broker() -> None:
    redis_opts = celeryconfig.transport_options("redis://h:6379/0")
    longest = celeryconfig.task_time_limit + WorkerSettings().task_retry_backoff_max
    assert redis_opts["visibility_timeout"] > longest
    assert celeryconfig.transport_options("amqp://guest:guest@h//")["confirm_publish"] is True
    assert "visibility_timeout" not in celeryconfig.transport_options("amqp://h//")


def test_cache_url_defaults_to_the_brokers_redis() -> None:
    assert WorkerSettings(celery_broker_url="redis://b:1/2").cache_url() == "redis://b:1/2"
    assert WorkerSettings(celery_broker_url="amqp://x//").cache_url() == "redis://localhost:6379/0"
    assert WorkerSettings(cache_redis_url="redis://c/3").cache_url() == "redis://c/3"


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHE_PREFIX", "other")
    monkeypatch.setenv("TASK_MAX_RETRIES", "4")
    monkeypatch.setenv("WORKER_METRICS_PORT", "9100")
    s = WorkerSettings()
    assert (s.cache_prefix, s.task_max_retries, s.worker_metrics_port) == ("other", 4, 9100)


@pytest.mark.parametrize("bad", ["12", True, [1]])
def test_event_time_must_be_a_number(bad: object) -> None:
    with pytest.raises(BadArgumentsError):
        check_time(bad)


def test_event_time_defaults_to_now() -> None:
    assert check_time(None) > 1.7e9 and check_time(5) == 5.0


def test_trailing_ids_are_deterministic_and_valid() -> None:
    from cache.keys import validate_id
    from tasks.coalesce import trail_id

    assert trail_id("a") == trail_id("a") != trail_id("b")
    assert validate_id(trail_id("x" * 256), "id")
