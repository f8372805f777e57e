"""Fault 4: a TCP proxy between the listener and the Messenger, and between the worker and its broker Redis.

Both links are delayed, cut (RST both ways) and black-holed (bytes held, nothing closed) while events flow.
A cut or black-holed Messenger link costs the listener its session: events published meanwhile are covered by
the gap resync on resubscription. A cut broker link makes the worker reconnect; a black-holed one stalls it
until the link heals. Counted as everywhere else; lost must be 0.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.listener.conftest import wait_for
from tests.support.pipeline import Pipeline, assert_nothing_lost
from tests.support.tcpproxy import TcpProxy

pytestmark = pytest.mark.chaos


@pytest.fixture
def proxies(pipeline: Pipeline) -> Iterator[tuple[TcpProxy, TcpProxy]]:
    to_messenger = TcpProxy(("127.0.0.1", pipeline.messenger.port)).start()
    to_broker = TcpProxy(("127.0.0.1", pipeline.broker.port)).start()
    yield to_messenger, to_broker
    to_messenger.stop()
    to_broker.stop()


def test_cut_delay_and_black_hole_on_both_links(
    pipeline: Pipeline, proxies: tuple[TcpProxy, TcpProxy]
) -> None:
    p = pipeline
    to_messenger, to_broker = proxies
    p.start_worker(broker_url=f"redis://127.0.0.1:{to_broker.port}/0")
    listener = p.start_listener(baseurl=to_messenger.url_for("http"))
    stream = p.stream(700, rate=60)

    def reconnects() -> float:
        return p.metric(listener, "proxysync_listener_reconnects_total")

    # delay: 50 ms each way on both links, 2 s
    stream.wait_published(60)
    to_messenger.set_delay(0.05)
    to_broker.set_delay(0.05)
    time.sleep(2.0)
    to_messenger.heal()
    to_broker.heal()
    # cut: both links reset
    stream.wait_published(stream.published + 60)
    before = reconnects()
    assert to_messenger.cut() >= 1 and to_broker.cut() >= 1
    wait_for(lambda: reconnects() > before and p.subscribed(listener), 20, "listener back after the cut")
    # black hole on the Messenger link, 3 s: the listener leaves the silent session, reconnects after
    stream.wait_published(stream.published + 60)
    before = reconnects()
    to_messenger.blackhole()
    wait_for(lambda: not p.subscribed(listener), 10, "the black hole to be noticed")
    time.sleep(1.0)
    to_messenger.heal()
    wait_for(lambda: reconnects() > before and p.subscribed(listener), 20, "back after the black hole")
    # black hole on the broker link, 3 s: the worker stalls, then carries on
    stream.wait_published(stream.published + 60)
    to_broker.blackhole()
    time.sleep(3.0)
    to_broker.heal()
    stream.join()
    p.wait_applied(45, resync_ok=True)
    counts = p.account("4 tcp proxy: delay, cut, black hole (both links)", window=True)
    counts.notes.append(f"listener connects through the proxy: {to_messenger.accepted}, worker connects to "
                        f"Redis: {to_broker.accepted}")
    assert_nothing_lost(p, counts, resync_allowed=True)
