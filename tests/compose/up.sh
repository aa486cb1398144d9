#!/usr/bin/env bash
# The Docker demo in one command: builds the image from this workspace, starts docker-compose.yml
# (two directors, a witness, two DR real servers, a client; `setup` applies cluster.toml), waits
# until a director owns the VIPs, and prints the cluster status. Tear down: docker compose down
set -euo pipefail
cd "$(dirname "$0")/../.."
bash tests/compose/build-images.sh
if docker compose version >/dev/null 2>&1; then dc=(docker compose); else dc=(docker-compose); fi
"${dc[@]}" up -d
# `setup` applies the config once the cluster has a leader; then the preferred director takes
# the VIP group.
for _ in $(seq 1 60); do
  "${dc[@]}" exec -T client fulcrum --json cluster status 2>/dev/null | grep -q '"owner": [0-9]' && break
  sleep 1
done
"${dc[@]}" exec -T client fulcrum cluster status
cat <<MSG

The demo is up. Run a failover drill from the client container:
  ${dc[*]} exec client fulcrum drill --move
  ${dc[*]} exec client fulcrum drill --kill --yes-kill-the-owner
Restart a killed director:  ${dc[*]} start director1
Tear everything down:       ${dc[*]} down
MSG
