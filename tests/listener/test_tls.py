"""TLS: https:// becomes wss://, certificates are verified by default, a CA bundle adds trust."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from listener.service import Listener
from messenger.server import MessengerServer
from proxysync import constants as C
from tests.listener.conftest import BrokerQueues, event, subscribed, wait_for
from tests.support.tls import self_signed


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1; cert.pem doubles as the CA bundle that trusts it."""
    return self_signed(tmp_path_factory.mktemp("listener-tls"))


@pytest.fixture
def tls_messenger(certificate: tuple[Path, Path]) -> Iterator[MessengerServer]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(certificate[0]), str(certificate[1]))
    server = MessengerServer(ssl_context=context, heartbeat_ms=1000).start()
    yield server
    server.stop()


def test_an_untrusted_certificate_is_refused(
    tls_messenger: MessengerServer,
    make_listener: Callable[..., Listener],
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert tls_messenger.url.startswith("https://")
    listener = make_listener(WEBSOCKET_CLIENT_BASEURL=tls_messenger.url)
    wait_for(
        lambda: any("CERTIFICATE_VERIFY_FAILED" in r.getMessage() for r in caplog.records),
        what="a verification failure",
    )
    assert listener.supervisor.subscriptions == 0
    assert tls_messenger.stats()["connects"] == 0


def test_a_ca_bundle_makes_it_trusted_over_sockjs_wss(
    tls_messenger: MessengerServer,
    make_listener: Callable[..., Listener],
    certificate: tuple[Path, Path],
    topic: str,
    queues: BrokerQueues,
) -> None:
    listener = make_listener(
        WEBSOCKET_CLIENT_BASEURL=tls_messenger.url, WEBSOCKET_CLIENT_CA_BUNDLE=str(certificate[0])
    )
    wait_for(subscribed(listener), what="subscription over TLS")
    session = listener.supervisor.session
    assert session is not None and session.transport.target.url.startswith("wss://127.0.0.1:")
    assert session.transport.target.framing == "sockjs"
    wait_for(
        lambda: (
            tls_messenger.publish(C.topic_destination(topic), event("ROUTES_REFRESH", eventId="tls")) == 1
        ),
        what="publish",
    )
    wait_for(lambda: [t["id"] for t in queues.events()] == ["tls"], what="task")
