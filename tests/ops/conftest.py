"""Fixtures of the op tests: ``backend`` runs a test once per backend (forced via LMDEQ_BACKEND)."""
import pytest

from lmdeq.ops import backends

from .helpers import backend_params


@pytest.fixture(params=backend_params("cpu"))
def backend(request, monkeypatch):
    monkeypatch.setenv(backends.ENV_VAR, request.param)
    return request.param
