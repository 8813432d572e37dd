"""
Embedded etcd, as k3s runs it: an etcd member beside each server (Debian's
``etcd`` as a supervised child process), k3s's layout under
``server/db/etcd`` and ``server/tls/etcd``, joining through the supervisor,
learners promoted by the leader, snapshots and cluster reset.

The rooms:

- C{config}: the member's name and files, and its YAML config (pure);
- C{member}: L{EmbeddedEtcd}, the datastore on the member it runs;
- C{join}: what a new server does before the reactor runs (bootstrap data,
  the critical-config check, member-add);
- C{membership}: the supervisor's ``/db/info`` and the leader's learner promotion
  and member removal;
- C{snapshots}: scheduled snapshots, retention, and cluster reset.
"""
