"""
The scheduler (kube-scheduler's default profile, in part): L{framework} holds
the filters and scores as pure functions, L{scheduler} the loop that places
pods through ``pods/binding``.
"""
