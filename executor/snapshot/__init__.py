"""Starts from a snapshot: a template VM of a shape, booted once and saved; each launch of
that shape starts from its saved state (executor.snapshot.start)."""
