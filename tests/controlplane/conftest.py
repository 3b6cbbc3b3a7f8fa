"""Tests of the control plane itself; the fixtures come from tests.cluster.fixtures (root conftest)."""
