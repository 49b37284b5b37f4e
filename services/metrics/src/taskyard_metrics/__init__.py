"""Taskyard metrics service: cluster-wide Prometheus figures from the EVENTS stream and JetStream state."""
