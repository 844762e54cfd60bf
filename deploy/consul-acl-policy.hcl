# The Consul ACL policy rehydrator's token needs (Consul 1.8 and newer). Each rule comes from
# an endpoint that src/consul/ calls, with the ACL Consul's API documentation lists for it.
#
#   consul acl policy create -name rehydrator -rules @deploy/consul-acl-policy.hcl
#   consul acl token create -description rehydrator -policy-name rehydrator
#
# `rehydrator doctor` checks what can be checked of it without writing, and tests/doctor.rs runs
# a replica on a token of exactly this policy against real Consul. Snapshots before a step
# (rollout.snapshot_dir) need more: only a token with acl = "write" may save one.

# Locks, receipts, the rollout record and the pause key: rehydrator/<cluster>/...
# (KV get: key:read; put, cas, acquire, release, delete: key:write; a job takes its lock in
# one /v1/txn, whose operations are checked against these same rules).
key_prefix "rehydrator/" {
  policy = "write"
}
# The replica's session: create, renew and destroy are session:write on the session's node,
# which is the node of the agent that CONSUL_HTTP_ADDR points at. `status` reads sessions (info).
# Narrow it to `session "<that agent's node>"` when the agent is fixed.
session_prefix "" {
  policy = "write"
}
# The replica's liveness check (lock.check_ttl): agent/service/register and deregister, and
# agent/check/pass on its own `rehydrator` service, are service:write on it. Without this rule
# the session is made without the check, and a dead replica's locks wait for the session TTL.
service "rehydrator" {
  policy = "write"
}
# The event watch lists consul-rehydrate (event:read), and `rehydrator fire` fires it
# (event:write, which includes read).
event_prefix "consul-rehydrate" {
  policy = "write"
}
# The rollout: operator/autopilot/health is operator:read, and operator/raft/transfer-leader
# (moving leadership off a server before it is retired) is operator:write.
operator = "write"
# The servers in the catalog and their health (the `service` watch, `status`); results are
# filtered by node and service read.
node_prefix "" {
  policy = "read"
}
service_prefix "" {
  policy = "read"
}
