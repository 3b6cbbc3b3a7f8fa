"""``kubectl beco``: the kubectl plugin for BecoNetworks (status, rotate-keys, connect, verify-log).

Layers: :mod:`summary` and :mod:`args` are pure (tested without a cluster); :mod:`cluster`
talks to the Kubernetes API, :mod:`forward` runs ``kubectl port-forward`` and the ``beco``
CLI; :mod:`main` wires them. Object names and annotations come from ``beco_operator.names``,
the operator's own source.
"""
