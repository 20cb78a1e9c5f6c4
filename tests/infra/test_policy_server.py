"""The policy pack as `pulumi preview --policy-pack infra/policy` runs it: a gRPC analyzer process.

The Pulumi engine is the boundary we cannot run here, so the test plays the engine's part: it
starts infra/policy/__main__.py, reads the port it prints, and calls the Analyzer service.
"""

from __future__ import annotations

import subprocess
import sys

import grpc
import pytest
from google.protobuf import empty_pb2, struct_pb2
from infra_program import INFRA, program_for
from pulumi.runtime.proto import analyzer_pb2, analyzer_pb2_grpc

from tuneplane_infra.policy_rules import RULES


@pytest.fixture(scope="module")
def analyzer():
    process = subprocess.Popen(
        [sys.executable, str(INFRA / "policy" / "__main__.py")],
        cwd=INFRA / "policy",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        port = process.stdout.readline().strip()
        if not port.isdigit():
            stderr = process.stderr.read() if process.poll() is not None else ""
            raise AssertionError(f"the policy pack did not print its port: {port!r} {stderr}")
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=60)
        yield analyzer_pb2_grpc.AnalyzerStub(channel)
        channel.close()
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def analyze(stub, resource_type: str, props: dict) -> list:
    properties = struct_pb2.Struct()
    properties.update(props)
    request = analyzer_pb2.AnalyzeRequest(
        type=resource_type,
        properties=properties,
        urn=f"urn:pulumi:dev::tuneplane::{resource_type}::r",
        name="r",
    )
    return list(stub.Analyze(request, timeout=60).diagnostics)


def test_analyzer_lists_every_rule(analyzer):
    info = analyzer.GetAnalyzerInfo(empty_pb2.Empty(), timeout=60)
    assert info.name == "tuneplane-azure"
    described = {p.name: p.description for p in info.policies}
    assert set(described) == {r.name for r in RULES}
    assert all("CKV" in d for d in described.values())


def test_analyzer_blocks_a_violation_and_passes_the_program(analyzer):
    account = dict(program_for("default").one("storage:StorageAccount", "tpdata").inputs)
    assert analyze(analyzer, "azure-native:storage:StorageAccount", account) == []
    diagnostics = analyze(analyzer, "azure-native:storage:StorageAccount", {**account, "allowSharedKeyAccess": True})
    assert [d.policyName for d in diagnostics] == ["storage-no-shared-key"]
    assert "CKV2_AZURE_40" in diagnostics[0].message
    assert diagnostics[0].enforcementLevel == analyzer_pb2.MANDATORY


def test_analyzer_runs_the_stack_rule(analyzer):
    program = program_for("default")
    resources = []
    for r in program.resources:
        props = struct_pb2.Struct()
        props.update({**r.inputs, **({"hbiWorkspace": True} if r.name == "tuneplane-mlw" else {})})
        resources.append(analyzer_pb2.AnalyzerResource(
            type=r.type, urn=r.urn, name=r.name, properties=props,
            propertyDependencies={k: analyzer_pb2.AnalyzerPropertyDependencies(urns=v)
                                  for k, v in r.property_dependencies.items()},
        ))
    response = analyzer.AnalyzeStack(analyzer_pb2.AnalyzeStackRequest(resources=resources), timeout=60)
    [diagnostic] = response.diagnostics
    assert diagnostic.policyName == "ml-hbi-workspace-storage-private"
    assert "CKV2_AZURE_50" in diagnostic.message
    assert diagnostic.urn == program.one("storage:StorageAccount", "tpdata").urn
