"""The Messenger stand-in: a small STOMP 1.2 broker over WebSocket (raw and SockJS-framed) + HTTP publish API.

For development, the demo and the tests; production uses the real Messenger. Modules: ``frames`` (the STOMP
codec), ``broker`` (STOMP state, no I/O), ``app`` (the aiohttp application), ``server``
(:class:`~messenger.server.MessengerServer`: the app on a thread, for in-process use), ``cli`` (the
``proxysync messenger`` command), ``measure`` (delivery figures).
"""
