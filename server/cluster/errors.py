"""The exceptions of the Redis cluster layer: what failed, and whether a publish may have happened."""

from __future__ import annotations


class ClusterError(Exception):
    """Base class of every error the cluster layer raises."""


class ClusterConfigError(ClusterError, ValueError):
    """A `--cluster` URL (or another cluster setting) is invalid; the message says what and why."""


class ClusterUnavailable(ClusterError):
    """Redis could not be reached in time: the request was not carried out (for a publish: it was
    never sent, so it will never be delivered). The message starts with ``cluster unavailable:``."""

    def __init__(self, detail: str):
        super().__init__(f"cluster unavailable: {detail}")


class ClusterOutcomeUnknown(ClusterUnavailable):
    """The request was sent but its reply was lost (connection dropped, or no reply within the
    timeout): a publish may or may not have been carried out. The message starts with
    ``cluster unavailable: outcome unknown:``."""

    def __init__(self, detail: str):
        super().__init__(f"outcome unknown: {detail}")


class ClusterReplyError(ClusterError):
    """Redis answered the request with an error (a bug or a misconfigured server, not an outage)."""
