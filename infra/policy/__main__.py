"""The tuneplane policy pack: `pulumi preview --policy-pack infra/policy`.

Constructing PolicyPack starts the analyzer's gRPC server, so this file only assembles it; the
rules live in tuneplane_infra.policy_rules, where tests import them.
"""

import sys
from pathlib import Path

# The pack runs from infra/policy/; its rules live next door in infra/tuneplane_infra.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pulumi_policy import EnforcementLevel, PolicyPack  # noqa: E402

from tuneplane_infra.policy_rules.pack import PACK_NAME, build_policies  # noqa: E402

PolicyPack(name=PACK_NAME, enforcement_level=EnforcementLevel.MANDATORY, policies=build_policies())
