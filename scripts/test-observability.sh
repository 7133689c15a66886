#!/usr/bin/env bash
# The operator's view of hsm-kms, checked against a real Prometheus (issue 14):
#
#   scripts/test-observability.sh [load-minutes]     (default 1)
#
# 1. installs Debian's `prometheus` (2.42: prometheus and promtool) and
#    `python3-prometheus-client` / `python3-yaml` when missing;
# 2. `promtool check rules docker/prometheus/rules.yml`;
# 3. the compose file with the `observability` profile through
#    `docker compose config` (or docker-compose), when a compose tool is
#    installed, and the profile's image (docker/prometheus/Dockerfile) built
#    when a Docker engine answers and the debian:bookworm-slim base is there
#    (scripts/build-image.sh makes it);
# 4. the release server (built as scripts/soak.sh builds it; OBS_PROFILE=debug
#    uses the test suite's debug build instead) with a fresh
#    SoftHSM token, a Prometheus (the package's binary, natively, on a
#    loopback port) scraping it every second with rules.yml loaded, then
#    load: the soak's mix of both dialects (hsm-kms-loadgen, a 10 s peak
#    probe and `load-minutes` of the open-loop mix) plus refused calls (a
#    bad signature, a ciphertext that does not decrypt);
# 5. through Prometheus's HTTP API: the target is up, every query of
#    docker/grafana/hsm-kms.json and every alert expression of rules.yml
#    (its left-hand side: alert expressions end in `<op> <number>`) returns
#    data, every recording rule has a series; `promtool check metrics` finds
#    nothing to say about a scrape.
# Exits non-zero on the first check that fails; prints how long it took.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

T0=$SECONDS
MINUTES="${1:-1}"
case "$MINUTES" in '' | *[!0-9]* | 0) die "load-minutes must be a positive number, got '$MINUTES'" ;; esac
PY=/usr/bin/python3

apt_install softhsm2 opensc prometheus python3-prometheus-client python3-yaml
command -v cc >/dev/null 2>&1 || apt_install build-essential
command -v pkg-config >/dev/null 2>&1 || apt_install pkg-config
PROMETHEUS="$(command -v prometheus || echo /usr/bin/prometheus)"
PROMTOOL="$(command -v promtool || echo /usr/bin/promtool)"
[ -x "$PROMETHEUS" ] && [ -x "$PROMTOOL" ] || die "prometheus / promtool not found after installing Debian's prometheus"
log "$("$PROMETHEUS" --version 2>&1 | head -1)"

cd "$ROOT"
RULES="$ROOT/docker/prometheus/rules.yml"
DASHBOARD="$ROOT/docker/grafana/hsm-kms.json"

log "promtool check rules"
"$PROMTOOL" check rules "$RULES"
"$PROMTOOL" check config docker/prometheus/prometheus.yml >/dev/null 2>&1 \
    || log "note: promtool check config needs rules.yml at /etc/prometheus (the image's path); checked in the image build below"

# 3. Compose profile and image.
COMPOSE=()
if docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
    COMPOSE=(docker-compose)
fi
if [ "${#COMPOSE[@]}" -gt 0 ]; then
    log "${COMPOSE[*]} config (observability profile)"
    # `config` reads the secret files' paths only; placeholders if absent.
    SECRETS_MADE=()
    for f in pin so-pin postgres-password pgpass; do
        if [ ! -e "docker/secrets/$f" ]; then
            : >"docker/secrets/$f"
            SECRETS_MADE+=("docker/secrets/$f")
        fi
    done
    out="$("${COMPOSE[@]}" -f docker/compose.yaml --profile observability config 2>&1)" || {
        rm -f "${SECRETS_MADE[@]}"
        die "compose config failed: $out"
    }
    rm -f "${SECRETS_MADE[@]}"
    grep -q 'hsm-kms-prometheus' <<<"$out" || die "the observability profile has no prometheus service"
else
    log "no compose tool installed: compose config check skipped"
fi
if docker info >/dev/null 2>&1 && docker image inspect debian:bookworm-slim >/dev/null 2>&1; then
    log "building the observability profile's image (docker/prometheus)"
    docker build -q -t hsm-kms-prometheus:test docker/prometheus >/dev/null
    docker run --rm --entrypoint /usr/bin/promtool hsm-kms-prometheus:test check config /etc/prometheus/prometheus.yml
    docker image rm hsm-kms-prometheus:test >/dev/null
else
    log "no Docker engine with the debian:bookworm-slim base: image build skipped (scripts/build-image.sh makes the base)"
fi

# 4. Server, Prometheus, load.
MODULE="$(softhsm_module)"
[ -f "$MODULE" ] || die "PKCS#11 module $MODULE not found"
need_cargo
if [ "${OBS_PROFILE:-release}" = debug ]; then
    # The test suite's build (scripts/test.sh): no release build needed.
    log "building hsm-kms and hsm-kms-loadgen (debug, --all-features)"
    cargo build --locked --all-features --bin hsm-kms --bin hsm-kms-loadgen
    TARGET="${CARGO_TARGET_DIR:-$ROOT/target}/debug"
else
    log "building hsm-kms and hsm-kms-loadgen (release)"
    cargo build --release --locked --features loadgen --bin hsm-kms --bin hsm-kms-loadgen
    TARGET="${CARGO_TARGET_DIR:-$ROOT/target}/release"
fi

WORK="$(mktemp -d /tmp/hsm-kms-obs.XXXXXX)"
SERVER_PID=""
PROM_PID=""
cleanup() {
    for p in "$PROM_PID" "$SERVER_PID"; do
        if [ -n "$p" ]; then
            kill "$p" 2>/dev/null || true
            wait "$p" 2>/dev/null || true
        fi
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

loadgen_site "$WORK" obs "$MODULE" "$TARGET"

"$TARGET/hsm-kms" --config "$CONFIG" serve --addr-file "$WORK/addr" >/dev/null 2>"$WORK/server.log" &
SERVER_PID=$!
for _ in $(seq 100); do [ -s "$WORK/addr" ] && break; sleep 0.1; done
[ -s "$WORK/addr" ] || die "server did not start: $(cat "$WORK/server.log")"
ADDR="$(cat "$WORK/addr")"

PROM_PORT="$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
PROM="http://127.0.0.1:$PROM_PORT"
cat >"$WORK/prometheus.yml" <<YML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $RULES
scrape_configs:
  - job_name: hsm-kms
    static_configs:
      - targets: ["$ADDR"]
YML
"$PROMTOOL" check config "$WORK/prometheus.yml" >/dev/null
"$PROMETHEUS" --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/tsdb" \
    --web.listen-address="127.0.0.1:$PROM_PORT" >"$WORK/prometheus.log" 2>&1 &
PROM_PID=$!
for _ in $(seq 100); do curl -fsS "$PROM/-/ready" >/dev/null 2>&1 && break; sleep 0.2; done
curl -fsS "$PROM/-/ready" >/dev/null || die "prometheus did not start: $(tail -5 "$WORK/prometheus.log")"
log "server $ADDR (pid $SERVER_PID), prometheus $PROM (pid $PROM_PID)"

# Refused calls, so that error families have series: an unsigned call, a bad
# signature, and a NAVER ciphertext the token cannot decrypt.
$PY - "$ADDR" "$AK" "$SOAK_SECRET_KEY" <<'PY'
import base64, hashlib, hmac, json, sys, time, urllib.request, urllib.error
addr, ak, sk = sys.argv[1:4]
def call(method, path, body=None, secret=sk):
    ts = str(int(time.time() * 1000))
    msg = f"{method} {path}\n{ts}\n{ak}".encode()
    sig = base64.b64encode(hmac.new(secret.encode(), msg, hashlib.sha256).digest()).decode()
    req = urllib.request.Request(f"http://{addr}{path}", method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"x-ncp-apigw-timestamp": ts, "x-ncp-iam-access-key": ak,
                 "x-ncp-apigw-signature-v2": sig, "content-type": "application/json"})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)
st, b = call("POST", "/kms/v1/keys", {"keyName": "obs-probe", "keyType": "AES256", "isAutoRotation": False})
assert st == 200, (st, b)
tag = b["data"]["keyTag"]
forged = "ncpkms:v1:" + base64.b64encode(bytes(48)).decode()
st, b = call("POST", f"/kms/v1/keys/{tag}/decrypt", {"ciphertext": forged})
assert st in (200, 400), (st, b)
st, _ = call("GET", "/kms/v1/keys", secret="wrong")
assert st == 401, st
print("refused calls sent")
PY

log "load: hsm-kms-loadgen, 10 s probe + $MINUTES min of the mixed load (its soak verdict is not judged here)"
nice -n 5 "$TARGET/hsm-kms-loadgen" --addr "$ADDR" --pid "$SERVER_PID" --minutes "$MINUTES" --probe-secs 10 \
    --access-key "$AK" --uak-id "$UAK_ID" --key-store obs-store >"$WORK/loadgen.log" 2>&1 || log "loadgen verdict: $(tail -1 "$WORK/loadgen.log")"
grep -E '^(peak|minute|verdict)' "$WORK/loadgen.log" | head -5 >&2 || true
kill -0 "$SERVER_PID" 2>/dev/null || die "the server died under load: $(tail -5 "$WORK/server.log")"
# Two more rule evaluations and scrapes after the load.
sleep 3

curl -fsS "http://$ADDR/metrics" >"$WORK/metrics.txt"
log "promtool check metrics"
"$PROMTOOL" check metrics <"$WORK/metrics.txt" >"$WORK/lint.txt" 2>&1 || {
    sed 's/^/    /' "$WORK/lint.txt" | head -40 >&2
    die "promtool check metrics found problems in /metrics"
}
$PY "$ROOT/scripts/lib/metrics_families.py" "$WORK/metrics.txt" >"$WORK/families.json" \
    || die "the prometheus_client parser refused /metrics"

# 5. Every dashboard query and alert expression through the HTTP API.
$PY "$ROOT/scripts/lib/prom_queries.py" "$PROM" "$DASHBOARD" "$RULES" "$WORK/families.json"
log "observability checks passed"
echo "test-observability.sh: $((SECONDS - T0)) s"
