"""Training compute: a CPU and a GPU cluster that cost nothing while idle."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi
from pulumi_azure_native import machinelearningservices as ml


@dataclass(frozen=True)
class ClusterSpec:
    name: str
    vm_size: str
    max_nodes: int


@dataclass(frozen=True)
class ComputeArgs:
    resource_group_name: pulumi.Input[str]
    location: str
    workspace_name: pulumi.Input[str]
    cpu: ClusterSpec
    gpu: ClusterSpec
    low_priority: bool
    idle_seconds_before_scale_down: int
    tags: Mapping[str, str] = field(default_factory=dict)


class Compute(pulumi.ComponentResource):
    """Outputs: cpu_cluster_name, gpu_cluster_name and each cluster's identity principal id."""

    def __init__(self, name: str, args: ComputeArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("tuneplane:infra:Compute", name, None, opts)
        self.cpu = self._cluster(f"{name}-cpu", args.cpu, args)
        self.gpu = self._cluster(f"{name}-gpu", args.gpu, args)
        self.cpu_cluster_name = self.cpu.name
        self.gpu_cluster_name = self.gpu.name
        self.cpu_principal_id = self.cpu.identity.apply(lambda i: i.principal_id)
        self.gpu_principal_id = self.gpu.identity.apply(lambda i: i.principal_id)
        self.register_outputs(
            {"cpu_cluster_name": self.cpu_cluster_name, "gpu_cluster_name": self.gpu_cluster_name}
        )

    def _cluster(self, resource_name: str, spec: ClusterSpec, args: ComputeArgs) -> ml.Compute:
        return ml.Compute(
            resource_name,
            resource_group_name=args.resource_group_name,
            workspace_name=args.workspace_name,
            compute_name=spec.name,
            location=args.location,
            # The cluster's own identity reads training data and writes outputs through the
            # identity-based datastores; no keys or SAS tokens reach the nodes.
            identity={"type": "SystemAssigned"},
            properties={
                "compute_type": "AmlCompute",
                "disable_local_auth": True,
                "properties": {
                    "vm_size": spec.vm_size,
                    "vm_priority": "LowPriority" if args.low_priority else "Dedicated",
                    "os_type": "Linux",
                    "enable_node_public_ip": False,
                    "remote_login_port_public_access": "Disabled",
                    "scale_settings": {
                        "min_node_count": 0,
                        "max_node_count": spec.max_nodes,
                        "node_idle_time_before_scale_down": f"PT{args.idle_seconds_before_scale_down}S",
                    },
                },
            },
            tags=dict(args.tags),
            opts=pulumi.ResourceOptions(parent=self),
        )
