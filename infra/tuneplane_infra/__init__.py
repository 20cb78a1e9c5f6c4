"""tuneplane's Azure infrastructure as Pulumi components (one per concern) and its policy rules."""
