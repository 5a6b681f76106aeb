"""The JSON schemas the scheduler validates requests with (package data)."""
