"""Shared settings for rill's SDK conformance tests.

scripts/sdk-test.sh starts `rill serve --model smollm2` and exports RILL_BASE_URL (e.g. http://127.0.0.1:PORT);
these tests fail, never skip, when it is missing.
"""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODEL = os.environ.get("RILL_MODEL_NAME", "smollm2")
# Every request in these tests is bounded: at most this many tokens, and a timeout.
MAX_TOKENS = 32
TIMEOUT = 60.0


def base_url() -> str:
    url = os.environ.get("RILL_BASE_URL")
    if not url:
        raise RuntimeError("RILL_BASE_URL is not set: run these tests through scripts/sdk-test.sh")
    return url.rstrip("/")


@pytest.fixture(scope="session")
def base() -> str:
    return base_url()


@pytest.fixture(scope="session")
def model() -> str:
    return MODEL
