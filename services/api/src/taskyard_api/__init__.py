"""Taskyard api service."""
