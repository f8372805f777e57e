"""The listener: one STOMP subscription to the Messenger, every frame into a Celery task, nothing lost.

Modules: ``settings`` (one settings class), ``urls`` and ``frames`` (pure), ``states`` (the connection state
table and backoff), ``auth`` (bearer tokens + log redaction), ``transport`` (the only socket I/O: stomp.py
over websocket-client, SockJS framing), ``spool`` (SQLite), ``sender`` (Celery ``send_task`` by name),
``dispatch`` (frame -> task or spool, ACK), ``supervisor`` (one live connection, reconnects, gap policy),
``service`` (wiring, HTTP health/metrics, signals), ``logs``, ``cli``; ``measure`` prints what the hot
paths cost.
"""
