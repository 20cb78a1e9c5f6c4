"""Store adapters under test. Each backend in BACKENDS gets the whole contract suite.

To add a backend, append its name and teach ``_build`` to construct its adapters (the Azure helper
builds them against Azurite).
"""

from __future__ import annotations

import pytest

from tests.azurite import azurite  # noqa: F401  (session fixture, used by the azure params)
from tuneplane.settings import Settings
from tuneplane.wiring import Adapters, build_adapters

BACKENDS = ["sqlite", "azure"]


def _build(backend: str, tmp_path, request) -> Adapters:
    if backend == "sqlite":
        return build_adapters(Settings(backend="local", home=tmp_path / "home"))
    if backend == "azure":
        # Table and Blob Storage on the session's Azurite; fresh tables and container per test.
        from tuneplane.backends.azure_config import AzureSettings
        from tuneplane.stores.azure import build_azure_adapters

        azurite = request.getfixturevalue("azurite")
        return build_azure_adapters(None, AzureSettings(
            storage_connection_string=azurite.connection_string,
            table_prefix=azurite.unique_name("t"), files_container=azurite.unique_name("c")))
    raise ValueError(f"no store fixture for backend {backend!r}")


@pytest.fixture(params=BACKENDS)
def adapters(request, tmp_path):
    built = _build(request.param, tmp_path, request)
    yield built
    built.close()


@pytest.fixture
def file_store(adapters):
    return adapters.files


@pytest.fixture
def job_store(adapters):
    return adapters.jobs


@pytest.fixture
def key_store(adapters):
    return adapters.keys


@pytest.fixture
def content_store(adapters):
    return adapters.contents
