"""core: what every stage shares: the recipe schema (config), the user-facing errors, version shims (compat), and
the run folder's guards (one owner, writability and space, the record of how an adapter's base was loaded).

May import: kit and third-party libraries only; no other pipeline package.
"""
