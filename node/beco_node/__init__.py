"""BECO data plane: user nodes, validator, SST and rendezvous of a permissioned identity network."""

__version__ = "0.1.0"
