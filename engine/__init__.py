"""Loom's engine: load YAML, compile it into a Manifest, and run the CRM it describes."""
