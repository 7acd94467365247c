"""End-to-end tests: gdispatch between SIPp user agents, on 127.0.0.1."""
