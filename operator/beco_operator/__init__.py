"""BECO operator: reconciles BecoNetwork resources into running networks."""
