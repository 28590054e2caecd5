"""Property-based fuzzing of every operation in the app's own OpenAPI schema (schemathesis, in-process over ASGI,
lifespan included): valid and invalid requests alike must never get a 5xx, an undocumented status code, or a
response that breaks the documented schema. Bounded and repeatable: 30 examples per operation and mode,
derandomized, no example database.
"""

from __future__ import annotations

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from server.app import create_app
from server.settings import Settings
from tests.server.conftest import write_tiny_weights

MAX_EXAMPLES = 30
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    weights = write_tiny_weights(tmp_path_factory.mktemp("weights"))
    # A short deadline and step cap keep any valid puzzle the fuzzer finds cheap to run.
    settings_ = Settings(weights_dir=weights, threads=1, slots=8, max_steps_limit=8, request_timeout_s=5.0)
    return create_app(settings_)


@pytest.fixture(scope="module")
def api_schema(app: FastAPI) -> schemathesis.schemas.BaseSchema:
    return schemathesis.openapi.from_asgi("/openapi.json", app)  # keeps the app's lifespan running


# The operations, read from the schema of an app that is built but never started (no weights needed).
# Negative examples exist only for operations that take input (a body or parameters).
PATHS = create_app().openapi()["paths"]
OPERATIONS = [
    pytest.param(method.upper(), path, mode, id=f"{method.upper()} {path} {mode.value}")
    for path, ops in PATHS.items()
    for method, spec in ops.items()
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or spec.get("parameters") or spec.get("requestBody")
]


@pytest.mark.parametrize(("method", "path", "mode"), OPERATIONS)
def test_no_server_errors_and_responses_match_the_schema(
    api_schema: schemathesis.schemas.BaseSchema, method: str, path: str, mode: GenerationMode
) -> None:
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: schemathesis.Case) -> None:
        case.call_and_validate(checks=CHECKS)

    check()
