"""The managed online endpoint that serves fine-tuned models.

Pulumi owns the endpoint; the control plane owns what runs behind it. Deployments are created by
the Deployer when a job succeeds, and traffic moves with every promotion, so Pulumi ignores the
traffic maps: a later `pulumi up` must never route traffic back or delete a live deployment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi
from pulumi_azure_native import machinelearningservices as ml

# Property paths (Pulumi's camelCase names) that the control plane changes at run time.
CONTROL_PLANE_OWNED = ["properties.traffic", "properties.mirrorTraffic"]


@dataclass(frozen=True)
class EndpointArgs:
    resource_group_name: pulumi.Input[str]
    location: str
    workspace_name: pulumi.Input[str]
    endpoint_name: str
    auth_mode: str
    tags: Mapping[str, str] = field(default_factory=dict)


class Endpoint(pulumi.ComponentResource):
    """Outputs: endpoint_name, scoring_uri."""

    def __init__(self, name: str, args: EndpointArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("tuneplane:infra:Endpoint", name, None, opts)
        self.endpoint = ml.OnlineEndpoint(
            f"{name}-online",
            resource_group_name=args.resource_group_name,
            workspace_name=args.workspace_name,
            endpoint_name=args.endpoint_name,
            location=args.location,
            kind="Managed",
            identity={"type": "SystemAssigned"},
            properties={
                "auth_mode": args.auth_mode,
                "description": "tuneplane fine-tuned models; deployments and traffic are managed by the control plane",
                "public_network_access": "Enabled",
            },
            tags=dict(args.tags),
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=CONTROL_PLANE_OWNED),
        )
        self.endpoint_name = self.endpoint.name
        self.scoring_uri = self.endpoint.properties.apply(lambda p: p.scoring_uri)
        self.register_outputs({"endpoint_name": self.endpoint_name, "scoring_uri": self.scoring_uri})
