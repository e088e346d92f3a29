"""The write itself, as the innermost ``loom_write`` implementation: plugins wrap it
(``@hookimpl(wrapper=True)``) to run code around the statements that store a record."""

from __future__ import annotations

from loomcrm.engine.hookspecs import hookimpl


@hookimpl(trylast=True)
def loom_write(write):
    return write()
