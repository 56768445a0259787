"""The cross-worker bus of one host: shared-memory segments, doorbells, the per-worker bus engine, and
the engine wired to a worker's loop as the first Broker (`broker.ShmBroker`)."""
