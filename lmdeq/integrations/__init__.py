"""Integrations with other DEQ libraries (optional dependencies)."""
