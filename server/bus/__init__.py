"""The cross-worker bus: shared-memory segments, doorbells and the per-worker bus engine."""
