"""The plugins shipped with gdispatch: ``tech_prefix``, ``dialplan``, ``domain_route``,
``orig_headers`` (README.md here documents each).

Each module is a plugin file like those an operator writes: `[plugins] enabled =
["tech_prefix"]` loads it by name from any configuration, with no ``hooks_dir``. A file
of the same name in ``hooks_dir`` wins, so a copy changed by the operator replaces the
shipped one (gdispatch.plugins). Nothing here is imported by gdispatch itself: a plugin
not enabled costs nothing.
"""
