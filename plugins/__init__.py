"""Built-in plugins: registered exactly like third-party ones, each overridable."""

#: Modules every app registers before the project's own plugins.
DEFAULT_PLUGINS = ("loomcrm.plugins.field_types", "loomcrm.plugins.audit", "loomcrm.plugins.writes")

__all__ = ["DEFAULT_PLUGINS"]
