"""Operating wsd (issue 12) against real servers: metrics, readiness, logs, notify, the server API."""
