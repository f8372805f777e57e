"""Publish -> worker -> Redis -> gateway near cache: per-stage latency of the real pipeline, vs the
original's shape.

Method (one run, everything on a private redis-server = broker + cache, unique queue/cache prefixes and
topic):

* Messenger: the stand-in (``MessengerServer`` in this process; the listener uses its default ``auto``
  transport, i.e. SockJS-framed) and/or RabbitMQ Web-STOMP (``ws://127.0.0.1:15674/ws``; we publish over its
  STOMP port).
* Ours: ``python -m listener`` -> Redis broker -> one ``celery -A tasks worker -c 1 -E`` (prefork, the shipped
  ``celeryconfig``) -> ``RouteAuthCache.apply`` -> feed -> a gateway process holding every key in a NearCache.
* Baseline (the original's shape): one stomp.py subscriber over the *same* transport classes that applies each
  event to Redis itself (``parse_event`` + ``RouteAuthCache.apply``) — no dispatcher, broker or worker hop.
* Each event is a CACHE_DELETE_INVALID of a key the gateway holds, published at a fixed rate; its body's
  ``timestamp`` is the publish time. Stamps: publish (``time.time()`` just before the publish call), task-sent
  (listener) / task-received (worker) Celery events, applied = the feed entry's ``applied_at`` (Redis TIME, ms
  resolution), dropped = the gateway's ``on_drop`` listener (``time.time()``). Same clock: one machine.

Goal reported against: end to end p50 <= 5 ms and p99 <= 25 ms at 500 events/s.

    python bench/propagation.py [--messenger standin|rabbitmq|both] [--rates 100,500,1000] [--count 1000]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _support as S
import redis

from cache import RouteAuthCache
from messenger.server import MessengerServer

GOAL_P50_MS, GOAL_P99_MS, GOAL_RATE = 5.0, 25.0, 500


def start_gateway(ctx: Any, url: str, prefix: str) -> tuple[Any, Any]:
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=S.gateway_proc, args=(url, prefix, [], child), daemon=True)
    proc.start()
    parent.recv()
    return proc, parent


def one_rate(url: str, prefix: str, gw: Any, publish: Any, rate: int, count: int, tag: str) -> dict[str, Any]:
    """Load ``count`` fresh keys everywhere, publish their deletes at ``rate``, return per-event stamps."""
    client = redis.Redis.from_url(url)
    cache = RouteAuthCache(client, prefix=prefix)
    keys = [S.bench_key(tag, i) for i in range(count)]
    for k in keys:
        cache.put(k, {"upstream": "http://u", "serviceName": "svc"})
    gw.send(("load", keys))
    _tag, held, following = gw.recv()
    assert following and held >= count, (held, following)
    feed_before = S.num(client.xlen(f"{prefix}:feed"))
    sent: dict[str, float] = {}
    start = time.monotonic()
    t_first = time.time()
    for i, k in enumerate(keys):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        ts = time.time()
        publish(S.event_body(i, tag, k, ts=ts))
        sent[f"b{tag}-{i}"] = ts
    achieved = count / max(time.time() - t_first, 1e-9)
    deadline = time.monotonic() + 15 + count / rate
    while time.monotonic() < deadline and S.num(client.xlen(f"{prefix}:feed")) < feed_before + count:
        time.sleep(0.05)
    time.sleep(0.3)  # the gateway's follower reads the last entries
    gw.send("collect")
    _tag, drops = gw.recv()
    client.close()
    return {"sent": sent, "drops": drops, "achieved": achieved}


def stages(
    res: dict[str, Any], received: dict[str, float], sent_ev: dict[str, float] | None
) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"e2e": [], "pub_to_recv": [], "recv_to_applied": [], "applied_to_drop": []}
    if sent_ev is not None:
        out["pub_to_broker"] = []
    by_event = {d[0]: d for d in res["drops"].values()}
    for eid, t_pub in res["sent"].items():
        d = by_event.get(eid)
        if d is None:
            continue
        _eid, _et, applied_ms, t_drop = d
        t_app = (applied_ms + 0.5) / 1000.0  # Redis TIME truncated to the ms: the middle of that ms
        out["e2e"].append((t_drop - t_pub) * 1000)
        out["applied_to_drop"].append((t_drop - t_app) * 1000)
        if eid in received:
            out["pub_to_recv"].append((received[eid] - t_pub) * 1000)
            out["recv_to_applied"].append((t_app - received[eid]) * 1000)
        if sent_ev is not None and eid in sent_ev:
            out["pub_to_broker"].append((sent_ev[eid] - t_pub) * 1000)
    return out


def run_kind(
    kind: str,
    url: str,
    rates: list[int],
    count: int,
    ctx: Any,
    rid: str,
    caps: S.EventCapture,
    env: dict[str, str],
) -> dict[str, Any]:
    topic = f"bench-{rid}-{kind}"
    dest = f"/topic/{topic}"
    server: MessengerServer | None = None
    pub: S.RabbitPublisher | None = None
    if kind == "standin":
        server = MessengerServer("127.0.0.1", 0, heartbeat_ms=0).start()
        m_url, transport, endpoint, host = server.url, "auto", "/messenger/websocket", None
        target = server.sockjs_url

        def publish(body: str) -> None:
            assert server is not None
            server.publish(dest, body)
    else:
        pub = S.RabbitPublisher()
        m_url, transport, endpoint, host = "ws://127.0.0.1:15674", "websocket", "/ws", "/"
        target = S.RABBIT_WS

        def publish(body: str) -> None:
            assert pub is not None
            pub.publish(dest, body)

    results: dict[str, Any] = {}
    procs: list[S.Proc] = []
    try:
        # --- ours: listener -> broker -> worker ---
        prefix = env["CACHE_PREFIX"]  # the worker's
        lst, ready = S.start_listener(
            env,
            name=f"listener-{kind}",
            messenger_url=m_url,
            transport=transport,
            endpoint=endpoint,
            topic=topic,
            stomp_host=host,
        )
        procs.append(lst)
        S.wait_for(lambda: S.http_status(ready) == 200, 30, "listener /readyz", procs=(lst,))
        gw_proc, gw = start_gateway(ctx, url, prefix)
        for rate in rates:
            res = one_rate(url, prefix, gw, publish, rate, count, f"{rid}{kind[0]}o{rate}")
            time.sleep(0.5)  # late Celery events
            results.setdefault(str(rate), {})["ours"] = (
                stages(res, caps.stamps["task-received"], caps.stamps["task-sent"]),
                res["achieved"],
            )
        gw.send("stop")
        gw_proc.join(10)
        lst.stop()
        procs.remove(lst)
        # --- baseline: the original's shape ---
        bprefix = f"bench-prop-{rid}-{kind}-base"
        parent, child = ctx.Pipe()
        base = ctx.Process(
            target=S.baseline_listener_proc,
            args=(url, bprefix, target, transport, dest, host, child),
            daemon=True,
        )
        base.start()
        _t, ok = parent.recv()
        assert ok, "baseline subscriber did not connect"
        gw_proc, gw = start_gateway(ctx, url, bprefix)
        for rate in rates:
            res = one_rate(url, bprefix, gw, publish, rate, count, f"{rid}{kind[0]}b{rate}")
            parent.send("collect")
            _t, received = parent.recv()
            results[str(rate)]["baseline"] = (stages(res, received, None), res["achieved"])
        gw.send("stop")
        gw_proc.join(10)
        parent.send("stop")
        base.join(10)
    finally:
        for p in procs:
            p.stop()
        if server is not None:
            server.stop()
        if pub is not None:
            pub.close()
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument(
        "--messenger",
        choices=["standin", "rabbitmq", "both"],
        default="both",
        help="both = the stand-in, plus RabbitMQ Web-STOMP when it answers",
    )
    ap.add_argument("--rates", default="100,500,1000", help="events per second, comma separated")
    ap.add_argument("--count", type=int, default=1000, help="events per rate")
    ap.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="what-if: an extra environment variable for the listener and worker (repeatable), "
        "e.g. CELERY_SEND_EVENTS=0 (then the worker runs without -E: no 'received' stage)",
    )
    ap.add_argument("--pool", default="prefork", help="what-if: the worker's -P (prefork, solo, threads)")
    args = ap.parse_args()
    extra = dict(kv.split("=", 1) for kv in args.env)
    rates = [int(r) for r in args.rates.split(",") if r]
    kinds = (
        ["standin"]
        if args.messenger == "standin"
        else ["rabbitmq"]
        if args.messenger == "rabbitmq"
        else ["standin", "rabbitmq"]
    )
    notes: list[str] = []
    if "rabbitmq" in kinds and not S.rabbit_answers():
        if args.messenger == "rabbitmq":
            print("RabbitMQ STOMP/Web-STOMP (61613/15674) does not answer", file=sys.stderr)
            return 2
        kinds.remove("rabbitmq")
        notes.append("rabbitmq skipped: 15674/61613 do not answer")
    rid = S.run_id()
    ctx = mp.get_context("spawn")
    all_res: dict[str, Any] = {}
    with S.private_redis() as rs:
        url = rs.url
        qp = f"bench-prop-{rid}"
        env = S.base_env(url, qp, f"bench-prop-{rid}", **extra)
        app = S.ping_app(url)
        node = S.node_name("bench-prop-worker")
        worker = S.start_worker(
            env,
            node=node,
            queue_prefix=qp,
            concurrency=1,
            pool=args.pool,
            events=env.get("CELERY_SEND_EVENTS") != "0",
        )
        caps = S.EventCapture(url)
        try:
            S.wait_worker(app, node, worker)
            for kind in kinds:
                all_res[kind] = run_kind(kind, url, rates, args.count, ctx, rid, caps, env)
        finally:
            caps.stop()
            worker.stop()
    if extra or args.pool != "prefork":
        notes.append(f"what-if: environment {extra}, worker pool {args.pool}")
    return report(all_res, rates, args.count, notes)


LABELS = {
    "pub_to_broker": "  publish -> task in broker",
    "pub_to_recv": "  publish -> received (worker)",
    "recv_to_applied": "  received -> Redis entry gone",
    "applied_to_drop": "  Redis gone -> near dropped",
    "e2e": "  end to end (publish -> dropped)",
}


def report(all_res: dict[str, Any], rates: list[int], count: int, notes: list[str]) -> int:
    print(
        f"propagation: CACHE_DELETE_INVALID events, {count} per rate, publish -> worker -> Redis -> "
        "NearCache; "
        "baseline = stomp.py subscriber applying to Redis in-process (no Celery hop); private redis-server"
    )
    figures: dict[str, Any] = {}
    lost = 0
    chart_series: dict[str, list[float]] = {}
    for kind, per_rate in all_res.items():
        for rate in rates:
            r = per_rate[str(rate)]
            print(
                f"\n[{kind}] {rate} ev/s (achieved ours {r['ours'][1]:.0f}/s, "
                f"baseline {r['baseline'][1]:.0f}/s)"
            )
            print(S.header())
            fig: dict[str, Any] = {}
            for who in ("ours", "baseline"):
                st = r[who][0]
                print(f"{who}:")
                for stage in ("pub_to_broker", "pub_to_recv", "recv_to_applied", "applied_to_drop", "e2e"):
                    if stage in st:
                        label = (
                            LABELS[stage].replace("(worker)", "(subscriber)")
                            if who == "baseline"
                            else LABELS[stage]
                        )
                        print(S.row(label, st[stage]))
                fig[who] = {
                    s: {k: S.r3(v) for k, v in S.summary(vals).items() if k != "n"} for s, vals in st.items()
                }
                lost += count - len(st["e2e"])
                fig[who]["lost"] = count - len(st["e2e"])
            o, b = fig["ours"]["e2e"], fig["baseline"]["e2e"]
            fig["ratio_p50"] = S.r3(o["p50"] / b["p50"]) if o["p50"] and b["p50"] else None  # None: no data
            fig["ratio_p99"] = S.r3(o["p99"] / b["p99"]) if o["p99"] and b["p99"] else None
            print(f"ratio ours/baseline end to end: p50 {fig['ratio_p50']}x, p99 {fig['ratio_p99']}x")
            figures.setdefault(kind, {})[str(rate)] = fig
            if rate == GOAL_RATE:
                for stage, vals in r["ours"][0].items():
                    chart_series[f"{kind} ours {stage}"] = vals
                chart_series[f"{kind} baseline e2e"] = r["baseline"][0]["e2e"]
    goal: dict[str, Any] = {"p50_ms": GOAL_P50_MS, "p99_ms": GOAL_P99_MS, "rate": GOAL_RATE}
    for kind in all_res:
        e2e = figures[kind].get(str(GOAL_RATE), {}).get("ours", {}).get("e2e")
        if e2e and e2e["p50"] is not None and e2e["p99"] is not None:
            goal[kind] = {
                "p50_ms": e2e["p50"],
                "p99_ms": e2e["p99"],
                "met": bool(e2e["p50"] <= GOAL_P50_MS and e2e["p99"] <= GOAL_P99_MS),
            }
            print(
                f"goal at {GOAL_RATE} ev/s [{kind}]: p50 {e2e['p50']} ms (<= {GOAL_P50_MS}), "
                f"p99 {e2e['p99']} ms (<= {GOAL_P99_MS}): {'MET' if goal[kind]['met'] else 'NOT MET'}"
            )
    print(S.chart(S.OUT / "propagation.png", f"propagation latency at {GOAL_RATE} ev/s (CDF)", chart_series))
    for n in notes:
        print(n)
    print(
        "note: 'Redis entry gone' is the feed entry's applied_at (Redis TIME, ms resolution): the two stages "
        "around it carry +-1 ms of rounding each; end to end does not."
    )
    print(
        json.dumps(
            {
                "bench": "propagation",
                "count": count,
                "figures": figures,
                "baseline": "in-process stomp.py subscriber -> RouteAuthCache.apply (no Celery hop)",
                "goal": goal,
                "lost": lost,
            }
        )
    )
    return 0 if lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
