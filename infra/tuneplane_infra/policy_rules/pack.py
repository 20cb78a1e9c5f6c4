"""pulumi_policy wrappers for RULES; building these does not start the policy server."""

from __future__ import annotations

from pulumi_policy import (
    EnforcementLevel,
    Policy,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

from tuneplane_infra.policy_rules import RULES, Rule, StackResource, StackRule

PACK_NAME = "tuneplane-azure"


def to_stack_resources(args: StackValidationArgs) -> list[StackResource]:
    return [
        StackResource(
            type=r.resource_type,
            urn=r.urn,
            props=r.props,
            property_dependencies={k: [d.urn for d in deps] for k, deps in (r.property_dependencies or {}).items()},
        )
        for r in args.resources
    ]


def to_stack_policy(rule: StackRule) -> StackValidationPolicy:
    def validate(args: StackValidationArgs, report_violation: ReportViolation) -> None:
        for message, urn in rule.validate_stack(to_stack_resources(args)):
            report_violation(message, urn)

    return StackValidationPolicy(
        name=rule.name,
        description=rule.description,
        validate=validate,
        enforcement_level=EnforcementLevel.MANDATORY,
    )


def to_policy(rule: Rule) -> ResourceValidationPolicy:
    def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        message = rule.validate(args.resource_type, args.props)
        if message is not None:
            report_violation(message, None)

    return ResourceValidationPolicy(
        name=rule.name,
        description=rule.description,
        validate=validate,
        enforcement_level=EnforcementLevel.MANDATORY,
    )


def build_policies() -> list[Policy]:
    return [to_policy(rule) if isinstance(rule, Rule) else to_stack_policy(rule) for rule in RULES]
