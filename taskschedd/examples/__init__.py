"""Example jobs: allowed by the default configuration, used by the quick start and tests."""
