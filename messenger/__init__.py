"""The Messenger stand-in: a small STOMP 1.2 broker over WebSocket (raw and SockJS-framed) + HTTP publish API.

For development, the demo and the tests; production uses the real Messenger. ``messenger.frames`` is the STOMP
codec, ``messenger.broker`` the STOMP state without I/O, ``messenger.server`` the aiohttp server (and
:class:`~messenger.server.MessengerServer` for in-process use), ``messenger.cli`` the ``proxysync messenger``
command.
"""
