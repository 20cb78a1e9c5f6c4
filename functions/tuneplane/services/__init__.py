"""Use cases the routers (and later the reconciler) call; no HTTP here."""
