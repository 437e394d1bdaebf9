#!/usr/bin/env bash
# Build the image and run it the way the Kubernetes Deployment runs it, on this machine:
# a local Debian base (mmdebstrap), random weights, the rendered ConfigMap's env, TLS from
# a mounted certificate, a read-only root with a tmpfs /tmp, uid 10001, no capabilities, a
# real PostgreSQL, `check --deploy`, the migration Job's command, the readiness budget, the
# classic curl contract, a history row, HSTS, metrics on their own port, JSON logs, and
# `docker stop` during a request. Traffic stays on 127.0.0.1.
#
# Needs: docker (dockerd running), mmdebstrap, kubectl (kustomize), PostgreSQL 15 binaries,
# curl; run as root (PostgreSQL is started as the postgres user).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PORT=${CONTAINER_TEST_PORT:-18000}
METRICS_PORT=${CONTAINER_TEST_METRICS_PORT:-18100}
PGPORT=${CONTAINER_TEST_PGPORT:-55441}
IMAGE=${IMAGE:-classifier:container-test}
BASE=${BASE_IMAGE:-local/bookworm-python-slim:latest}
work=$(mktemp -d /tmp/container-test.XXXXXX)
chmod 755 "$work"  # PostgreSQL runs as its own user inside it
cid=""
cleanup() {
  [ -n "$cid" ] && docker rm -f "$cid" >/dev/null 2>&1 || true
  [ -d "$work/pg" ] && runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D "$work/pg" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
say() { printf '== %s\n' "$*"; }

if ! docker image inspect "$BASE" >/dev/null 2>&1; then
  # Like python:3.11-slim: Debian's essential set, Python, venv, CA certificates and
  # libstdc++ (numpy's and OpenVINO's wheels need it), without docs, man pages, locales.
  say "base image $BASE from mmdebstrap (bookworm: python3 python3-venv ca-certificates libstdc++6)"
  mmdebstrap --quiet --variant=essential --include=python3,python3-venv,ca-certificates,libstdc++6 \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    bookworm "$work/base.tar"
  docker import "$work/base.tar" "$BASE" >/dev/null
fi

say "build (WEIGHTS=random; the host CA bundle for pip in the build stage only)"
mkdir -p .build && cp /etc/ssl/certs/ca-certificates.crt .build/ca.crt
started=$(date +%s)
docker build --quiet --build-arg BASE_IMAGE="$BASE" --build-arg WEIGHTS=random -t "$IMAGE" . >/dev/null
echo "built in $(( $(date +%s) - started )) s; image size $(docker image inspect "$IMAGE" --format '{{.Size}}' | awk '{printf "%.0f MB", $1/1e6}')"

say "lint: hadolint on the Dockerfile"
.venv/bin/hadolint Dockerfile  # exits non-zero on any finding
echo "hadolint: clean"

say "manifests: render, validate (strict, Kubernetes 1.37 schemas), policy check (checkov)"
kubectl kustomize k8s/ > "$work/rendered.yaml"
"$PY" -m kubernetes_validate --strict --quiet "$work/rendered.yaml"
echo "kubernetes-validate: all objects valid"
if [ ! -x .venv-policy/bin/checkov ]; then
  python3 -m venv .venv-policy
  .venv-policy/bin/pip install --quiet --disable-pip-version-check -r requirements-policy.txt
fi
# --skip-download: no calls to the vendor's API; skips are annotated in the manifests.
.venv-policy/bin/checkov -f "$work/rendered.yaml" --framework kubernetes --compact --quiet \
  --skip-download | grep -E "Passed checks|FAILED|Check:" || true
.venv-policy/bin/checkov -f "$work/rendered.yaml" --framework kubernetes --quiet --skip-download >/dev/null
"$PY" - "$work/rendered.yaml" > "$work/configmap.env" <<'PYEOF'
import sys, yaml
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if doc and doc["kind"] == "ConfigMap":
        for key, value in doc["data"].items():
            print(f"{key}={value}")
PYEOF

say "PostgreSQL 15 on 127.0.0.1:$PGPORT"
mkdir "$work/pg" && chown postgres "$work/pg"
runuser -u postgres -- /usr/lib/postgresql/15/bin/initdb -D "$work/pg" -U postgres --auth=trust >/dev/null
runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D "$work/pg" -l "$work/pg/log" -w \
  -o "-h 127.0.0.1 -p $PGPORT -k $work/pg" start >/dev/null
/usr/lib/postgresql/15/bin/psql -h 127.0.0.1 -p "$PGPORT" -U postgres -qc "CREATE DATABASE classifier"
psql_q() { /usr/lib/postgresql/15/bin/psql -h 127.0.0.1 -p "$PGPORT" -U postgres -d classifier -tAc "$1"; }

say "TLS certificate for localhost (the Deployment mounts the classifier-tls Secret)"
mkdir "$work/tls"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost -keyout "$work/tls/tls.key" -out "$work/tls/tls.crt" 2>/dev/null
chown -R 10001:10001 "$work/tls" && chmod 0440 "$work/tls"/* && chmod 0755 "$work/tls"

# As the Deployment runs it (host network only to reach the loopback PostgreSQL; the
# server and its metrics listener bind 127.0.0.1).
run=(--network host --read-only --tmpfs /tmp:size=64m --user 10001:10001 --cap-drop ALL
     --security-opt no-new-privileges --env-file "$work/configmap.env"
     -v "$work/tls:/etc/classifier/tls:ro"
     -e "DATABASE_URL=postgresql://postgres@127.0.0.1:$PGPORT/classifier"
     -e DJANGO_SECRET_KEY=container-test-secret-0123456789-abcdefghijklmnopqrstuvwxyz
     -e "GUNICORN_BIND=127.0.0.1:$PORT" -e "CLASSIFIER_METRICS_BIND=127.0.0.1:$METRICS_PORT")
# https://localhost:$PORT, verified against the certificate; Host: localhost as the probes.
https=(--cacert "$work/tls/tls.crt" --resolve "localhost:$PORT:127.0.0.1")
BASE_URL="https://localhost:$PORT"

say "check --deploy with the Deployment's settings"
docker run --rm "${run[@]}" -e CLASSIFIER_LOAD_ON_START=false "$IMAGE" \
  python manage.py check --deploy --fail-level WARNING

say "migrations, as the Job runs them"
docker run --rm "${run[@]}" -e CLASSIFIER_LOAD_ON_START=false "$IMAGE" python manage.py migrate --noinput | tail -1

say "server: ready within the startup budget (120 s)"
t0=$(date +%s.%N)
cid=$(docker run -d "${run[@]}" "$IMAGE")
ready=""
for _ in $(seq 1200); do
  if curl -sf "${https[@]}" "$BASE_URL/readyz" >/dev/null; then ready=1; break; fi
  sleep 0.1
done
[ -n "$ready" ] || { docker logs "$cid"; echo "FAIL: not ready"; exit 1; }
echo "cold start to ready: $(echo "$(date +%s.%N) - $t0" | bc) s"

say "the classic curl contract"
"$PY" -c "from classifier.tests import imagegen; open('$work/dog.jpg','wb').write(imagegen.jpeg(0,(500,375)))"
curl -s "${https[@]}" -X POST -F "image=@$work/dog.jpg" "$BASE_URL/predict" > "$work/answer.json"
"$PY" - "$work/answer.json" <<'PYEOF'
import json, sys
body = json.load(open(sys.argv[1]))
assert body["success"] is True, body
probabilities = [p["probability"] for p in body["predictions"]]
assert len(probabilities) == 5 and probabilities == sorted(probabilities, reverse=True), body
print("200 with 5 sorted predictions; engine", body["model"]["engine"], body["model"]["precision"])
PYEOF
rows=$(psql_q "SELECT count(*) FROM classifier_prediction")
[ "$rows" = 1 ] || { echo "FAIL: $rows history rows"; exit 1; }
echo "history row in PostgreSQL: $(psql_q "SELECT top_label, engine, precision FROM classifier_prediction")"

say "HTTPS headers, plain HTTP refused, metrics on their own port only, JSON logs"
headers=$(curl -s "${https[@]}" -D - -o /dev/null "$BASE_URL/")
grep -qi "^strict-transport-security: max-age=31536000; includeSubDomains; preload" <<<"$headers" \
  || { echo "FAIL: no HSTS: $headers"; exit 1; }
grep -qi "^set-cookie: csrftoken=.*; Secure" <<<"$headers" || { echo "FAIL: CSRF cookie not Secure"; exit 1; }
if curl -s -o /dev/null "http://127.0.0.1:$PORT/healthz"; then echo "FAIL: plain HTTP answered"; exit 1; fi
[ "$(curl -s -o /dev/null -w '%{http_code}' "${https[@]}" "$BASE_URL/metrics")" = 404 ] \
  || { echo "FAIL: /metrics on the public port"; exit 1; }
curl -sf "http://127.0.0.1:$METRICS_PORT/metrics" > "$work/metrics.txt"
grep -q '^classifier_http_requests_total{endpoint="predict",method="POST",status="200"} 1.0' "$work/metrics.txt" \
  && grep -q '^classifier_model_ready 1.0' "$work/metrics.txt" || { echo "FAIL: metrics"; cat "$work/metrics.txt"; exit 1; }
docker logs "$cid" 2>&1 | grep '"logger": "classifier.requests"' | grep '"path": "/predict"' | tail -1 \
  | "$PY" -c 'import json,sys; line=json.loads(sys.stdin.read()); assert line["status"]==200 and line["top_label"], line; print("request log:", {k: line[k] for k in ("request_id","status","latency_ms","images","top_label")})'
echo "HSTS, Secure cookie, no plain HTTP, metrics on :$METRICS_PORT only: ok"

say "docker stop (SIGTERM) during a request"
"$PY" -c "from classifier.tests import imagegen; open('$work/big.jpg','wb').write(imagegen.jpeg(1,(4000,3000)))"
files=(); for _ in 1 2 3 4 5 6; do files+=(-F "image=@$work/big.jpg"); done
curl -s -o /dev/null -w "%{http_code}" "${https[@]}" "${files[@]}" "$BASE_URL/predict" > "$work/status" &
sleep 0.3
docker stop --time 30 "$cid" >/dev/null
wait
status=$(cat "$work/status"); code=$(docker inspect "$cid" --format '{{.State.ExitCode}}')
echo "in-flight request: $status; container exit code: $code"
[ "$status" = 200 ] && [ "$code" = 0 ] || { docker logs "$cid" | tail -20; echo FAIL; exit 1; }
say "container test passed"
