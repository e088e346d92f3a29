"""The admin web app generated from the config: sign-in, lists, record pages, forms and workflow buttons
under ``/admin``, rendered on the server (jinja2, ``templates/admin/``) with htmx for partial updates.
``views.py`` works out what a page shows of an entity (pure), ``pages.py`` serves the pages through
the same record pipeline as the API, ``messages.py`` holds the app's own words per locale."""

from .pages import AdminPages, admin_routers

__all__ = ["AdminPages", "admin_routers"]
