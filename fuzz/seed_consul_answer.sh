#!/usr/bin/env bash
# Seeds fuzz/corpus/consul_answer with real Consul's answers: a dev agent of $CONSUL_BIN is
# given a session, keys, a lock, an event and a service, then each call the fuzz target knows
# is made with curl and its raw answer (status line, headers, body as sent, chunks and all)
# saved behind the call's name. Run by hand when the client learns a call; the seeds are
# committed.
set -euo pipefail
cd "$(dirname "$0")"
: "${CONSUL_BIN:?set CONSUL_BIN to a consul binary}"
out=corpus/consul_answer
mkdir -p "$out"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
http=$(port)
data=$(mktemp -d)
"$CONSUL_BIN" agent -dev -bind=127.0.0.1 -client=127.0.0.1 -dns-port=-1 -grpc-port=-1 \
  -http-port="$http" -serf-lan-port="$(port)" -serf-wan-port="$(port)" -server-port="$(port)" \
  -data-dir="$data" >"$data/agent.log" 2>&1 &
agent=$!
trap 'kill $agent 2>/dev/null; wait $agent 2>/dev/null; rm -rf "$data"' EXIT
api="http://127.0.0.1:$http/v1"
for _ in $(seq 100); do
  [ "$(curl -s "$api/status/leader" || true)" != '""' ] && curl -sf "$api/status/leader" >/dev/null && break
  sleep 0.1
done

session=$(curl -sf -X PUT "$api/session/create" -d '{"Name":"seed","TTL":"30s"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["ID"])')
curl -sf -X PUT "$api/kv/rehydrator/prod/rollout" -d '{"id":"r1","phase":"rolling"}' >/dev/null
curl -sf -X PUT "$api/kv/rehydrator/prod/locks/step?acquire=$session" -d 'r1' >/dev/null
curl -sf -X PUT "$api/event/fire/rehydrate" -d 'x' >/dev/null
curl -sf -X PUT "$api/agent/service/register" \
  -d '{"ID":"r","Name":"rehydrator","Check":{"CheckID":"r:alive","TTL":"30s"}}' >/dev/null
node=$(curl -sf "$api/agent/self" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Config"]["NodeName"])')

save() { # name method path [body]
  local name=$1 method=$2 path=$3 body=${4-}
  { printf '%s\n' "$name"
    curl -s -i --raw -X "$method" ${body:+--data-binary "$body"} "$api/$path"
  } >"$out/$name"
}
save kv_get GET "kv/rehydrator/prod/locks/step"
save kv_list GET "kv/rehydrator/prod/?recurse"
save kv_keys GET "kv/rehydrator/?keys&separator=/"
save kv_get_raw GET "kv/rehydrator/prod/rollout?raw"
save kv_put PUT "kv/k?cas=3" v
save kv_acquire PUT "kv/k?acquire=$session" v
save kv_delete DELETE "kv/k"
save txn PUT txn "[{\"KV\":{\"Verb\":\"get-tree\",\"Key\":\"rehydrator/prod/locks/step\"}},{\"KV\":{\"Verb\":\"lock\",\"Key\":\"rehydrator/prod/locks/step\",\"Value\":\"cjE=\",\"Session\":\"$session\"}},{\"KV\":{\"Verb\":\"get\",\"Key\":\"rehydrator/prod/rollout\"}}]"
save session_create PUT session/create '{"Name":"x","TTL":"10s"}'
save session_renew PUT "session/renew/$session"
save session_destroy PUT session/destroy/00000000-0000-0000-0000-000000000000
save session_info GET "session/info/$session"
save session_list GET session/list
save session_node GET "session/node/$node"
save agent_self GET agent/self
save agent_members GET agent/members
save agent_service_register PUT agent/service/register '{"ID":"r2","Name":"rehydrator"}'
save agent_check_pass PUT "agent/check/pass/r:alive"
save raft_configuration GET operator/raft/configuration
save autopilot_health GET operator/autopilot/health
save autopilot_configuration GET operator/autopilot/configuration
save transfer_leader POST operator/raft/transfer-leader
save status_leader GET status/leader
save status_peers GET status/peers
save catalog_services GET catalog/services
save catalog_service GET catalog/service/consul
save catalog_nodes GET catalog/nodes
save catalog_node GET "catalog/node/$node"
save health_service GET "health/service/consul?passing"
save health_checks GET health/checks/rehydrator
save health_state GET health/state/critical
save health_node GET "health/node/$node"
save event_fire PUT event/fire/rehydrate x
save event_list GET "event/list?name=rehydrate"
save acl_token_self GET acl/token/self
save snapshot GET snapshot
save watch_key GET "kv/rehydrator/prod/request"
save watch_keyprefix GET "kv/rehydrator/?recurse"
save watch_services GET catalog/services
save watch_nodes GET catalog/nodes
save watch_service GET "health/service/consul?passing"
save watch_checks GET health/state/critical
save watch_event GET "event/list?name=rehydrate"
# What an agent answers when things go wrong, as Consul words it.
save agent_leave GET no/such/endpoint
save autopilot_state GET operator/autopilot/state
save acl_policy_readable GET acl/policy/p-1
ls "$out" | wc -l
