"""The Prometheus metrics at GET /metrics (to be written)."""
