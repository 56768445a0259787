"""wsd's server: `control/` (the supervisor and its tools), `worker/` (one worker process), `node/`
(publish/subscribe inside a worker), `bus/` (the shared-memory bus between workers), the publish API,
and what they share: the client protocol, channel names, counters, logging, the static pages."""
