"""Helpers shared by the unit and the e2e tests: sipmsg (SIP messages as bytes), wait
(wait_for). Imported as tests.support.*, the repository root being on sys.path (pytest:
pythonpath in pyproject.toml)."""
