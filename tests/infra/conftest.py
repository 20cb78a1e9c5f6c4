"""Fixtures for the infra tests: each stack variant runs once per session under Pulumi's mocks."""

from __future__ import annotations

import asyncio

import pytest

from infra_program import VARIANTS, Program, program_for


@pytest.fixture(autouse=True)
def _current_event_loop():
    # Pulumi's mocks schedule on asyncio.get_event_loop(); an earlier test that ran asyncio.run()
    # leaves the main thread without a current loop, so give it one.
    try:
        asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:
        asyncio.set_event_loop(asyncio.new_event_loop())
    yield


@pytest.fixture
def default_program() -> Program:
    return program_for("default")


@pytest.fixture(params=sorted(VARIANTS))
def any_program(request) -> Program:
    return program_for(request.param)
