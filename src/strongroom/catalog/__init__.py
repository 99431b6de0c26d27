"""The catalog: Django models (``strongroom.models``) behind the small typed API of ``store``.

Importing this package (or ``store``) never touches Django: ``bootstrap.ensure_django`` sets it
up, and ``store`` does so itself on first use when nobody has.
"""
