#!/usr/bin/env bash
# Builds a real Kubernetes 1.20 control plane (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler) into a per-machine cache outside
# the clone, for the tests under tests/k8s/.  Everything comes from Debian:
# etcd from `etcd-server`, the three Kubernetes binaries from the
# `kubernetes` source package built with Debian's Go.
#
# Idempotent: a complete build leaves a stamp file and a second run exits at
# once.  Needs root for apt-get (the test machines run as root).
#
#   scripts/k8s-control-plane.sh           # build (or reuse) the cache
#   MODELFLEET_K8S_CACHE=/some/dir scripts/k8s-control-plane.sh
set -euo pipefail

CACHE="${MODELFLEET_K8S_CACHE:-$HOME/.cache/modelfleet/k8s-1.20.2}"
STAMP="$CACHE/.complete"
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler)
DEBSRC_FILE=/etc/apt/sources.list.d/modelfleet-deb-src.sources

fail() {
    echo "k8s-control-plane: FAILED: $*" >&2
    exit 1
}

# Runs one named step and prints how long it took; a failing step ends the
# script with a line naming it.
step() {
    local name="$1"
    shift
    local start=$SECONDS
    echo "k8s-control-plane: $name ..."
    "$@" || fail "$name (exit $?)"
    echo "k8s-control-plane: $name took $((SECONDS - start))s"
}

if [[ -f "$STAMP" ]]; then
    echo "k8s-control-plane: cached build in $CACHE ($(cat "$STAMP"))"
    exit 0
fi

# The deb-src entry mirrors the configured deb822 Debian entries (same
# URIs, suites and key), so the source comes from the mirror apt already uses.
add_deb_src() {
    if apt-get source --print-uris kubernetes >/dev/null 2>&1; then
        return 0
    fi
    local src=/etc/apt/sources.list.d/debian.sources
    [[ -f "$src" ]] || src=/etc/apt/sources.list
    [[ -f "$src" ]] || { echo "no Debian apt source found" >&2; return 1; }
    local out
    # Every binary entry but the security archive's (the kubernetes source is in the main
    # archive), as deb-src, with the same URIs (a snapshot mirror too), suites and key.
    if [[ "$src" == *.sources ]]; then
        out="$DEBSRC_FILE"
        awk 'BEGIN{RS=""; ORS="\n\n"} /Types: deb/ && !/security/ {sub(/Types: deb/, "Types: deb-src"); print}' \
            "$src" >"$out"
    else
        out="${DEBSRC_FILE%.sources}.list"
        { grep -E '^deb[[:space:]]' "$src" || true; } | grep -v security | sed 's/^deb/deb-src/' >"$out"
    fi
    [[ -s "$out" ]] || { rm -f "$out"; echo "no Debian archive entry in $src to mirror as deb-src" >&2; return 1; }
    apt-get update -qq
}

PACKAGES=(etcd-server golang-go golang-github-modern-go-reflect2-dev dpkg-dev)

all_installed() {
    local n
    n="$(dpkg-query -W -f='${Status}\n' "${PACKAGES[@]}" 2>/dev/null | grep -c '^install ok installed$' || true)"
    [[ "$n" == "${#PACKAGES[@]}" ]]
}

install_packages() {
    all_installed && return 0 # nothing to do, and no root needed
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
}

WORK="$(mktemp -d "${TMPDIR:-/tmp}/modelfleet-k8s-build.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

fetch_source() {
    (cd "$WORK" && apt-get source -qq kubernetes >/dev/null)
    SRC_DIR="$(find "$WORK" -maxdepth 1 -mindepth 1 -type d -name 'kubernetes-*' | head -n1)"
    [[ -n "$SRC_DIR" && -d "$SRC_DIR/vendor" ]] || { echo "no vendored kubernetes source in $WORK" >&2; return 1; }
}

# Kubernetes 1.20 vendors reflect2 1.0.1, whose unsafe map access breaks under
# Go >= 1.18: the API server panics decoding JSON bodies that hold maps.
# Debian's packaged reflect2 (1.0.2) carries the fix.
swap_reflect2() {
    local packaged=/usr/share/gocode/src/github.com/modern-go/reflect2
    [[ -d "$packaged" ]] || { echo "$packaged missing" >&2; return 1; }
    rm -rf "$SRC_DIR/vendor/github.com/modern-go/reflect2"
    cp -r "$packaged" "$SRC_DIR/vendor/github.com/modern-go/reflect2"
}

# Kubernetes 1.20 builds in GOPATH mode (its hack/lib/init.sh sets
# GO111MODULE=off): under Go 1.19 module mode with -mod=vendor refuses its
# go.mod ("updates to go.mod needed").  So the tree is linked into a GOPATH.
# The Go build cache sits in the cache dir so a rerun after a failure resumes;
# it is removed once all binaries are built.
gopath_link() {
    mkdir -p "$WORK/gopath/src/k8s.io"
    ln -s "$SRC_DIR" "$WORK/gopath/src/k8s.io/kubernetes"
}

gobuild() {
    (
        cd "$WORK/gopath/src/k8s.io/kubernetes"
        GOPATH="$WORK/gopath" GO111MODULE=off GOFLAGS= CGO_ENABLED=0 GOCACHE="$CACHE/.gocache" \
            nice -n 10 go "$@"
    )
}

# The source package lacks pkg/generated/openapi/zz_generated.openapi.go,
# which upstream's `make` generates (build/root/Makefile.generated_files,
# gen_openapi, KUBE target); this does the same with the vendored openapi-gen:
# every dir with a `+k8s:openapi-gen=` tag, staging dirs named as vendor/.
gen_openapi() {
    gobuild build -o "$WORK/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen || return 1
    local dirs
    dirs="$(
        cd "$WORK/gopath/src/k8s.io/kubernetes" &&
            find -H . \( -path './_*' -o -path './.*' -o -path ./vendor \) -prune -o -type f -name '*.go' -print |
            sed -e 's|^\./staging/src|vendor|' -e 's|^\./||' |
                grep -v -e '^vendor/k8s.io/code-generator/' -e '^vendor/k8s.io/sample-apiserver/' |
                { xargs grep -l '^// *+k8s:' || true; } | { xargs grep -l '+k8s:openapi-gen=' || true; } |
                xargs -n1 dirname | LC_ALL=C sort -u | sed 's|^|k8s.io/kubernetes/|' | paste -sd, -
    )"
    [[ -n "$dirs" ]] || { echo "no +k8s:openapi-gen packages found" >&2; return 1; }
    (
        cd "$WORK/gopath/src/k8s.io/kubernetes"
        GOPATH="$WORK/gopath" GO111MODULE=off nice -n 10 "$WORK/openapi-gen" \
            -i "$dirs" -p k8s.io/kubernetes/pkg/generated/openapi -O zz_generated.openapi \
            -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt -r "$WORK/openapi-violations.report"
    ) || return 1
    [[ -f "$SRC_DIR/pkg/generated/openapi/zz_generated.openapi.go" ]]
}

build_one() {
    local name="$1"
    gobuild build -ldflags "-s -w" -o "$CACHE/bin/$name" "./cmd/$name"
}

copy_etcd() {
    cp /usr/bin/etcd "$CACHE/bin/etcd"
}

TOTAL_START=$SECONDS
mkdir -p "$CACHE/bin"
step "add deb-src for the configured Debian mirror" add_deb_src
step "install etcd-server, golang-go, reflect2 sources" install_packages
step "apt-get source kubernetes" fetch_source
step "replace vendored reflect2 with Debian's" swap_reflect2
step "link the source into a GOPATH" gopath_link
step "generate the OpenAPI definitions (openapi-gen)" gen_openapi
for b in "${BINARIES[@]}"; do
    step "go build $b" build_one "$b"
done
step "copy etcd" copy_etcd
rm -rf "$CACHE/.gocache"
for b in "${BINARIES[@]}" etcd; do
    [[ -x "$CACHE/bin/$b" ]] || fail "$CACHE/bin/$b missing after build"
done
echo "kubernetes $(basename "$SRC_DIR" | sed 's/^kubernetes-//'), $(go version | awk '{print $3}'), built $(date -u +%FT%TZ) in $((SECONDS - TOTAL_START))s" >"$STAMP"
echo "k8s-control-plane: done in $((SECONDS - TOTAL_START))s: $CACHE/bin"
