"""Taskyard web UI: server-rendered pages that talk to the REST API with the signed-in user's key."""
