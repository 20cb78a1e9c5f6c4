"""HTTP layer: thin routers (validate, call the service, serialise), errors and auth."""
