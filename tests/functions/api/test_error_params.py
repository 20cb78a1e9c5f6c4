from __future__ import annotations

import pytest

from tuneplane.api.errors import param_from_location


@pytest.mark.parametrize(
    ("loc", "param"),
    [
        (("body", "model"), "model"),
        (("body", "method", "dpo", "hyperparameters", "beta"), "method.dpo.hyperparameters.beta"),
        (("body", "peft", "target_modules", "list[str]", 0), "peft.target_modules[0]"),
        (("body", "peft", "target_modules", "literal['all-linear']"), "peft.target_modules"),
        (("body", "metadata", "some key", "[key]"), "metadata"),
        (("body", "metadata", "k"), "metadata.k"),
        (("body",), None),
        (("query", "limit"), "limit"),
        (("header", "Idempotency-Key"), "Idempotency-Key"),
    ],
)
def test_param_names_the_field(loc, param):
    assert param_from_location(loc) == param
