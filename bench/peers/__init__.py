"""Peer job systems, run from the peers virtualenv (bench/.venv-peers)."""
