"""Fault 7: security checks on the real processes.

* The bearer token never appears in the listener's output at any level: the listener runs at DEBUG (stomp.py
  logs every frame, CONNECT and SUBSCRIBE headers included), first with a refused token, then the right one,
  and its whole output (and the worker's) is searched for both values.
* ``wss://`` to a stand-in with a self-signed certificate is refused by the listener process unless
  ``WEBSOCKET_CLIENT_CA_BUNDLE`` names it; with the bundle, events flow and are applied. (The in-process
  variant is tests/listener/test_tls.py, whose certificate fixture this reuses.)
* A Celery message in the pickle content type is refused (never run) and dead-lettered by workers:
  ``tests/tasks/test_effects.py::test_pickle_message_is_refused_and_dead_lettered`` covers it on both brokers;
  it is not repeated here.
"""

from __future__ import annotations

import signal
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.listener.conftest import wait_for
from tests.listener.test_tls import certificate  # noqa: F401 - the fixture, reused
from tests.support.pipeline import TOKEN, Pipeline, assert_nothing_lost

pytestmark = pytest.mark.chaos


def test_token_never_appears_in_listener_output_at_debug(secured_pipeline: Pipeline, tmp_path: Path) -> None:
    p = secured_pipeline
    refused = "refused-token-7c2e9b41d0"
    token_file = tmp_path / "token"
    token_file.write_text(refused)
    worker = p.start_worker()
    # Given a listener at DEBUG whose first token is refused
    listener = p.start_listener(WEBSOCKET_CLIENT_TOKEN_FILE=token_file, log_level="DEBUG", wait=False)
    wait_for(lambda: p.metric(listener, "proxysync_listener_auth_failures_total") >= 2, 30, "auth refusals")
    # When the right token is in place and events flow
    token_file.write_text(TOKEN)
    p.wait_subscribed(listener)
    for i in range(20):
        p.publish_delete(i)
    assert p.wait_applied(30), p.diagnose()
    listener.popen.send_signal(signal.SIGTERM)
    listener.popen.wait(15)
    # Then neither token appears anywhere in the output, though the frames carrying them were logged
    out = listener.text()
    assert "DEBUG" in out and "authorization" in out.lower()
    for secret in (TOKEN, refused):
        assert secret not in out and secret not in worker.text()
    assert_nothing_lost(p, p.account("7 token at DEBUG: 2 refusals, then events"))


@pytest.fixture
def tls_pipeline(certificate: tuple[Path, Path], tmp_path: Path, redis_url: str, prefix: str  # noqa: F811
                 ) -> Iterator[Pipeline]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(certificate[0]), str(certificate[1]))
    p = Pipeline(tmp_path, redis_url, prefix, ssl_context=context).start()
    try:
        yield p
    finally:
        p.close()


def test_untrusted_certificate_refused_unless_ca_bundle_given(
    tls_pipeline: Pipeline, certificate: tuple[Path, Path]  # noqa: F811
) -> None:
    p = tls_pipeline
    assert p.messenger.url.startswith("https://")
    p.start_worker()
    # Given a listener process with no CA bundle: the self-signed certificate is refused
    untrusting = p.start_listener(wait=False)
    wait_for(lambda: "CERTIFICATE_VERIFY_FAILED" in untrusting.text(), 30, "a verification failure")
    assert not p.subscribed(untrusting) and p.messenger.stats()["connects"] == 0
    untrusting.stop()
    # When the certificate is given as the CA bundle, the session is established and events are applied
    trusting = p.start_listener(WEBSOCKET_CLIENT_CA_BUNDLE=certificate[0])
    for i in range(20):
        p.publish_delete(i)
    assert p.wait_applied(30), p.diagnose()
    assert p.subscribed(trusting)
    assert_nothing_lost(p, p.account("7 wss: untrusted refused, CA bundle trusted"))
