"""Shared pieces of Taskyard: settings, topology, wire schemas and NATS helpers."""

__version__ = "0.1.0"
