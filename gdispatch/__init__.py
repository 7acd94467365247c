"""gdispatch: a SIP load-balancing proxy on gevent, a file-configured alternative to
Kamailio's dispatcher module."""

__version__ = "0.1.0"
