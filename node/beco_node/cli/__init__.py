"""Command-line entry points: ``beco-node`` and ``beco``."""
