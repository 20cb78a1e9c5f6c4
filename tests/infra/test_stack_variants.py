"""Config variants: network isolation, low priority and sizes, and the events phase."""

from __future__ import annotations

from infra_program import program_for

from tuneplane_infra.settings import DEFAULT_OUTBOUND_FQDNS


def test_isolation_switches_to_approved_outbound_only():
    ws = program_for("isolated").one("machinelearningservices:Workspace").inputs
    network = ws["managedNetwork"]
    assert network["isolationMode"] == "AllowOnlyApprovedOutbound"
    # FQDN rules need the managed firewall; the defaults let jobs fetch models and packages.
    assert network["firewallSku"] == "Standard"
    destinations = {rule["destination"] for rule in network["outboundRules"].values()}
    assert destinations == set(DEFAULT_OUTBOUND_FQDNS)
    assert all(rule["type"] == "FQDN" and rule["category"] == "UserDefined" for rule in network["outboundRules"].values())
    # Compute stays without public IPs in both modes (it lives in the managed VNet).
    for cluster in program_for("isolated").of_type("machinelearningservices:Compute"):
        assert cluster.inputs["properties"]["properties"]["enableNodePublicIp"] is False


def test_public_mode_keeps_internet_outbound():
    network = program_for("default").one("machinelearningservices:Workspace").inputs["managedNetwork"]
    assert network == {"isolationMode": "AllowInternetOutbound"}


def test_low_priority_and_sizes_come_from_config():
    clusters = {c.inputs["computeName"]: c.inputs["properties"]["properties"]
                for c in program_for("low-priority").of_type("machinelearningservices:Compute")}
    assert {c["vmPriority"] for c in clusters.values()} == {"LowPriority"}
    assert clusters["cpu-cluster"]["scaleSettings"]["maxNodeCount"] == 6
    assert clusters["gpu-cluster"]["scaleSettings"]["maxNodeCount"] == 3
    assert clusters["gpu-cluster"]["vmSize"] == "Standard_NC24ads_A100_v4"
    assert {c["scaleSettings"]["minNodeCount"] for c in clusters.values()} == {0}
    default = {c.inputs["properties"]["properties"]["vmPriority"]
               for c in program_for("default").of_type("machinelearningservices:Compute")}
    assert default == {"Dedicated"}


def test_events_flag_adds_the_blob_created_subscription():
    program = program_for("events")
    [sub] = program.of_type("eventgrid:SystemTopicEventSubscription")
    i = sub.inputs
    topic = program.one("eventgrid:SystemTopic")
    assert i["systemTopicName"] == topic.state["name"]
    assert i["filter"] == {
        "includedEventTypes": ["Microsoft.Storage.BlobCreated"],
        "subjectBeginsWith": "/blobServices/default/containers/training-data/blobs/",
        "subjectEndsWith": ".jsonl",
        "isSubjectCaseSensitive": False,
    }
    app = program.one("web:WebApp")
    assert i["destination"]["endpointType"] == "AzureFunction"
    assert i["destination"]["resourceId"] == f"{app.id}/functions/training_blob_created"
    assert i["retryPolicy"] == {"maxDeliveryAttempts": 30, "eventTimeToLiveInMinutes": 1440}
    dead_letter = i["deadLetterWithResourceIdentity"]
    assert dead_letter["identity"] == {"type": "SystemAssigned"}
    assert dead_letter["deadLetterDestination"] == {
        "endpointType": "StorageBlob",
        "resourceId": program.one("storage:StorageAccount", "tpdata").id,
        "blobContainerName": "eventgrid-deadletter",
    }
    assert program.outputs["eventsEnabled"] is True
    # Everything else is the same stack: the flag only adds the subscription.
    others = sorted((r.type, r.name) for r in program.resources if r is not sub)
    assert others == sorted((r.type, r.name) for r in program_for("default").resources)


def test_every_variant_declares_valid_names(any_program):
    names = [(r.type, r.name) for r in any_program.resources]
    assert len(names) == len(set(names)), "duplicate logical names"
