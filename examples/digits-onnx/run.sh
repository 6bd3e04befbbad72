#!/usr/bin/env bash
# The whole path on one machine, everything on 127.0.0.1, cleaned up at the end:
#   train (scikit-learn digits) -> ONNX -> ormb save (signature read from the graph) -> push to
#   'ormb registry serve' with auth -> [serving side, own ORMB_HOME] storage initializer -> MLServer
#   (ONNX Runtime) -> REST inference requests -> predictions next to the true labels.
# Needs ormb with its [example] extra on PATH (scripts/demo installs it).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
WORK="$(mktemp -d /tmp/ormb-digits.XXXXXX)"
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_http() {  # wait_http URL: until it answers 200, at most 90 s
  python3 - "$1" <<'WAIT'
import sys, time, urllib.request
deadline = time.time() + 90
while time.time() < deadline:
    try:
        with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
            if r.status == 200:
                sys.exit(0)
    except OSError:
        time.sleep(0.2)
sys.exit(f"{sys.argv[1]} did not come up")
WAIT
}
wait_port() {  # wait_port HOST:PORT: until it accepts connections, at most 30 s
  python3 - "$1" <<'WAIT'
import socket, sys, time
host, port = sys.argv[1].rsplit(":", 1)
deadline = time.time() + 30
while time.time() < deadline:
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.05)
sys.exit(f"nothing listens on {sys.argv[1]}")
WAIT
}
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

REGISTRY="127.0.0.1:$(free_port)"
REF="$REGISTRY/examples/digits:v1"
export ORMB_NO_PROGRESS=1
USERNAME=demo
PASSWORD="$(python3 -c 'import secrets; print(secrets.token_urlsafe(16))')"
python3 - "$WORK/htpasswd" "$USERNAME" "$PASSWORD" <<'HTPASSWD'
import sys, bcrypt
path, user, password = sys.argv[1:]
open(path, "w").write(f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()}\n")
HTPASSWD

echo "==> the registry: ormb registry serve on $REGISTRY (htpasswd auth, Bearer tokens)"
ormb registry serve --root "$WORK/registry" --addr "$REGISTRY" --htpasswd "$WORK/htpasswd" 2>"$WORK/registry.log" &
PIDS+=($!)
wait_port "$REGISTRY"

echo; echo "==> training machine (ORMB_HOME=$WORK/trainer)"
export ORMB_HOME="$WORK/trainer"
echo "$PASSWORD" | ormb login "$REGISTRY" -u "$USERNAME" --password-stdin
(cd "$HERE" && python3 train.py "$REF" --workdir "$WORK/train")
ormb inspect "$REF" | sed -n '1,4p'

echo; echo "==> serving machine (ORMB_HOME=$WORK/server): storage initializer, as a KServe init container runs it"
export ORMB_HOME="$WORK/server" ORMB_USERNAME="$USERNAME" ORMB_PASSWORD="$PASSWORD"
ormb-storage-initializer "ormb://$REF" "$WORK/models/digits" --layout mlflow
unset ORMB_USERNAME ORMB_PASSWORD
find "$WORK/models" -type f | sort

echo; echo "==> the model server: MLServer with an ONNX Runtime runtime"
HTTP_PORT="$(free_port)"; GRPC_PORT="$(free_port)"; METRICS_PORT="$(free_port)"
cp "$HERE/serving/onnx_runtime.py" "$WORK/models/"
cat > "$WORK/models/settings.json" <<JSON
{"http_port": $HTTP_PORT, "grpc_port": $GRPC_PORT, "metrics_port": $METRICS_PORT, "parallel_workers": 0,
 "host": "127.0.0.1"}
JSON
cat > "$WORK/models/digits/model-settings.json" <<JSON
{"name": "digits", "implementation": "onnx_runtime.OnnxRuntime", "parameters": {"uri": "./model.onnx"}}
JSON
(cd "$WORK/models" && exec mlserver start . >"$WORK/mlserver.log" 2>&1) &
PIDS+=($!)
if ! wait_http "http://127.0.0.1:$HTTP_PORT/v2/models/digits/ready"; then
  tail -30 "$WORK/mlserver.log"; exit 1
fi

echo; echo "==> REST inference requests to MLServer (V2 protocol), held-out test images"
(cd "$HERE" && python3 query.py "http://127.0.0.1:$HTTP_PORT" digits)
echo; echo "==> example finished: trained -> ONNX -> ormb save -> push -> storage initializer -> MLServer -> predictions"
