"""The data plane: one worker process (`python -m wsd.server.worker`) serving WebSocket clients and
the publish API: its life cycle, routes, accept gating, drain, client sessions and the RFC 6455 layer."""
