"""Keepalive probing of the destinations, as Kamailio's dispatcher does it (``ds_ping_*``
parameters, ``ds_probing_mode``).

- `policy`: what a ping's result, or a failure seen in live traffic, does to a
  destination's state bits; which destinations are due a ping; latency statistics.
  Pure and sans-IO.
- `pinger`: the greenlet that sends the pings (SIP OPTIONS) through the proxy and feeds
  their results to `policy`.
"""
