"""Pulumi program entry (Pulumi.yaml: `main: infra/`). See infra/DEPLOY.md for the settings."""

import pulumi

from tuneplane_infra.stack import build

for _name, _value in build().items():
    pulumi.export(_name, _value)
