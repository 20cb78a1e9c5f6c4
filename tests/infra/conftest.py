"""Fixtures for the infra tests: each stack variant runs once per session under Pulumi's mocks."""

from __future__ import annotations

import pytest

from infra_program import VARIANTS, Program, program_for


@pytest.fixture
def default_program() -> Program:
    return program_for("default")


@pytest.fixture(params=sorted(VARIANTS))
def any_program(request) -> Program:
    return program_for(request.param)
