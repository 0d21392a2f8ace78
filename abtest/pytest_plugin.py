"""Loaded by pytest (``-p abtest.pytest_plugin`` in pyproject) before Django settings import.

Gives the test run the environment a developer would otherwise have to export by hand: a
throw-away ``SECRET_KEY``. Real variables (``DATABASE_URL``, ``REDIS_URL`` ...) pass through.
"""

import os

os.environ.setdefault("SECRET_KEY", "insecure-test-only-key-never-used-in-production")
# The test client speaks plain HTTP; HTTPS redirects are covered by `check --deploy` tests.
os.environ.setdefault("SECURE_SSL_REDIRECT", "0")
