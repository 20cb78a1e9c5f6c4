"""Training backends, model registries and deployers behind the ports in tuneplane.ports."""
