"""Event-driven retraining: BlobCreated on the training-data container wakes the function.

The system topic, its dead-letter container and the topic's write grant exist from the first
`pulumi up`. The subscription is phase two: Event Grid validates an Azure Function destination
against the deployed function, so it can only be created after the code is published
(`pulumi config set tuneplane:enableEvents true`, then `pulumi up` again).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi
from pulumi_azure_native import eventgrid, storage

from tuneplane_infra import roles

DEAD_LETTER_CONTAINER = "eventgrid-deadletter"
BLOB_CREATED = "Microsoft.Storage.BlobCreated"
# At-least-once delivery with a day of retries; the handler is idempotent (same blob and etag
# creates one job), and whatever still fails lands in the dead-letter container.
MAX_DELIVERY_ATTEMPTS = 30
EVENT_TIME_TO_LIVE_MINUTES = 1440


@dataclass(frozen=True)
class EventsArgs:
    resource_group_name: pulumi.Input[str]
    location: str
    subscription_id: pulumi.Input[str]
    data_storage_id: pulumi.Input[str]
    data_storage_name: pulumi.Input[str]
    training_data_container: str
    function_app_id: pulumi.Input[str]
    function_name: str
    # Phase two: only once the function code is published (see the module docstring).
    subscribe: bool
    tags: Mapping[str, str] = field(default_factory=dict)


def subject_prefix(container: str) -> str:
    """Event Grid subjects for blobs read /blobServices/default/containers/<container>/blobs/<path>."""
    return f"/blobServices/default/containers/{container}/blobs/"


class Events(pulumi.ComponentResource):
    """Outputs: system_topic_name, subscription_name (None until phase two), dead_letter_container_name."""

    def __init__(self, name: str, args: EventsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("tuneplane:infra:Events", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        self.dead_letter_container = storage.BlobContainer(
            f"{name}-deadletter",
            account_name=args.data_storage_name,
            resource_group_name=args.resource_group_name,
            container_name=DEAD_LETTER_CONTAINER,
            public_access="None",
            opts=child,
        )
        self.topic = eventgrid.SystemTopic(
            f"{name}-topic",
            resource_group_name=args.resource_group_name,
            location=args.location,
            source=args.data_storage_id,
            topic_type="Microsoft.Storage.StorageAccounts",
            # Dead lettering authenticates as the topic: the account accepts no keys.
            identity={"type": "SystemAssigned"},
            tags=dict(args.tags),
            opts=child,
        )
        topic_principal = self.topic.identity.apply(lambda i: i.principal_id)
        dead_letter_scope = pulumi.Output.concat(
            args.data_storage_id, "/blobServices/default/containers/", DEAD_LETTER_CONTAINER
        )
        self.dead_letter_grant = roles.assign_role(
            f"{name}-deadletter-writer",
            subscription_id=args.subscription_id,
            principal_id=topic_principal,
            role=roles.STORAGE_BLOB_DATA_CONTRIBUTOR,
            scope=dead_letter_scope,
            parent=self,
        )
        self.subscription: eventgrid.SystemTopicEventSubscription | None = None
        if args.subscribe:
            self.subscription = self._subscribe(name, args)
        self.system_topic_name = self.topic.name
        self.subscription_name = self.subscription.name if self.subscription else None
        self.dead_letter_container_name = self.dead_letter_container.name
        self.register_outputs(
            {
                "system_topic_name": self.system_topic_name,
                "subscription_name": self.subscription_name,
                "dead_letter_container_name": self.dead_letter_container_name,
            }
        )

    def _subscribe(self, name: str, args: EventsArgs) -> eventgrid.SystemTopicEventSubscription:
        return eventgrid.SystemTopicEventSubscription(
            f"{name}-blob-created",
            resource_group_name=args.resource_group_name,
            system_topic_name=self.topic.name,
            event_subscription_name="training-data-blob-created",
            destination={
                "endpoint_type": "AzureFunction",
                "resource_id": pulumi.Output.concat(args.function_app_id, "/functions/", args.function_name),
                "max_events_per_batch": 1,
                "preferred_batch_size_in_kilobytes": 64,
            },
            filter={
                "included_event_types": [BLOB_CREATED],
                "subject_begins_with": subject_prefix(args.training_data_container),
                "subject_ends_with": ".jsonl",
                "is_subject_case_sensitive": False,
            },
            event_delivery_schema="EventGridSchema",
            retry_policy={
                "max_delivery_attempts": MAX_DELIVERY_ATTEMPTS,
                "event_time_to_live_in_minutes": EVENT_TIME_TO_LIVE_MINUTES,
            },
            dead_letter_with_resource_identity={
                "identity": {"type": "SystemAssigned"},
                "dead_letter_destination": {
                    "endpoint_type": "StorageBlob",
                    "resource_id": args.data_storage_id,
                    "blob_container_name": DEAD_LETTER_CONTAINER,
                },
            },
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.dead_letter_grant, self.dead_letter_container]),
        )
