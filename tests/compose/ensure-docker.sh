# Sourced by .ci/run: makes Docker and Compose usable for the compose test
# (tests/tests/compose.rs), or fails loudly. Installs them when missing, starts the daemon when
# it is not running, and when the machine's daemon runs but does not answer (wedged), starts a
# private one on its own socket and directories for this run (stopped when .ci/run exits) and
# exports DOCKER_HOST for the tests.
docker_need=()
command -v docker >/dev/null || docker_need+=(docker.io)
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || docker_need+=(docker-compose)
if [ "${#docker_need[@]}" -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${docker_need[@]}"
fi

docker_answers() { timeout 20 docker network ls >/dev/null 2>&1; }
if ! docker_answers; then
  if ! pgrep -x dockerd >/dev/null; then
    echo "starting dockerd"
    dockerd >/var/log/dockerd.log 2>&1 &
  else
    echo "the machine's dockerd does not answer; starting a private one for this run" >&2
    ci_docker=/run/fulcrum-ci-docker
    # Same storage driver as the machine's daemon (the root file system may not take overlay).
    driver=$(grep -o '"storage-driver": *"[^"]*"' /etc/docker/daemon.json 2>/dev/null |
      sed 's/.*"\([^"]*\)"$/\1/' || true)
    if [ -n "$driver" ]; then
      echo "{\"storage-driver\": \"$driver\"}" >"$ci_docker.json"
    else
      echo '{}' >"$ci_docker.json"
    fi
    dockerd --config-file "$ci_docker.json" --host "unix://$ci_docker.sock" \
      --data-root /var/lib/fulcrum-ci-docker --exec-root "$ci_docker" \
      --pidfile "$ci_docker.pid" --bridge none >/var/log/fulcrum-ci-dockerd.log 2>&1 &
    ci_dockerd_pid=$!
    trap 'kill "$ci_dockerd_pid" 2>/dev/null || true' EXIT
    export DOCKER_HOST="unix://$ci_docker.sock"
  fi
  for _ in $(seq 1 60); do
    docker_answers && break
    sleep 1
  done
fi
docker_answers || {
  echo "Docker is unavailable: the compose test (tests/tests/compose.rs) needs a working daemon" >&2
  exit 1
}
echo "docker: $(docker info -f '{{.ServerVersion}}') at ${DOCKER_HOST:-the default socket}"
