"""The one runtime pipeline every channel uses: validate, hooks, persist in one transaction."""
