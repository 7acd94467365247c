"""What operators watch over HTTP (`[http]`): the listener (`server`), the Prometheus
metrics at /metrics (`metrics`), and the status page at / with its JSON (`status`).
Only the primary process listens: it holds every worker's counters and the states."""
