"""The status page at GET / and its JSON (to be written)."""
