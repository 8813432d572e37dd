"""
The datastore: one contract (L{k3stw.datastore.interface.IDatastore}) and its backends.

Imports run one way, from the top down:

- C{endpoint} (C{--datastore-endpoint} to a backend) and C{blocking} (the
  few keys a server reads before the reactor runs) choose a backend;
- the backends: C{sqlite}, C{postgres} and C{mysql} over the kine log in
  C{sql}, C{etcd} over etcd's JSON gateway, C{memory} for unit tests;
- what backends share: C{location} (the parsed endpoints), C{watch} and
  C{lease} (for the backends that see every event of their log),
  C{readiness}, and C{interface}.
"""
