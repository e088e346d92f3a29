"""What every answer of the admin app carries: a Content-Security-Policy that allows Loom's own static files
only (no inline scripts or styles anywhere in the templates), and headers against sniffing, framing and
caching of pages. CSRF tokens are made and checked by :class:`~.pages.AdminPages`."""

from __future__ import annotations

__all__ = ["CSP", "HEADERS"]

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin",
           "X-Frame-Options": "DENY", "Cache-Control": "no-store"}
