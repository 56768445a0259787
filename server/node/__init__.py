"""Publish/subscribe inside a worker: the node (sessions and the API in, broker and hub out), the hub
of local subscribers, and the Broker interface that the shared-memory and Redis buses implement."""
