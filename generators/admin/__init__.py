"""The admin web app generated from the config: sign-in, lists, record pages, forms and workflow buttons
under ``/admin``, rendered on the server (jinja2, ``templates/admin/``) with htmx for partial updates.

- ``views.py``: what a page shows of an entity (widgets, sections, columns, display text); pure.
- ``lists.py``: the filter bar, saved views and bulk actions, and the list pages.
- ``records.py``: record pages, forms, the global search and the reference lookup.
- ``pages.py``: who is calling, CSRF, rendering, sign-in, and the routes; ``security.py``: the headers.
- ``messages.py``: the app's own words per locale.

Every write goes through the same record pipeline as the API."""

from .pages import AdminPages, admin_routers

__all__ = ["AdminPages", "admin_routers"]
