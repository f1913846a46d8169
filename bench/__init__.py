"""Benchmarks of taskschedd against Huey, Celery and RQ (see bench/README.md)."""
