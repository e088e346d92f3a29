"""Artifacts generated from a Manifest: tables, migration plans, I/O models, routes."""
