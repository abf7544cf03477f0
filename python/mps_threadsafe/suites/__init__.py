"""The device-agnostic suites: story, bench and stress (python -m mps_threadsafe --help)."""
