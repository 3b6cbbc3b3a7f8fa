"""End-to-end tests: the user's journeys (local network, real Kubernetes cluster)."""
