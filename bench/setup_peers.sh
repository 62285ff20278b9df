#!/usr/bin/env bash
# Installs what bench/peers.py compares modelfleet with, outside the project's dependencies:
# wrk, nginx and HAProxy from Debian (a message instead where apt-get is not available), and
# each Python peer in its own virtualenv under bench/.venvs/
# (azmlinfsrv, LitServe, Ray Serve; for bench/v2_protocol.py MLServer, KServe and PyTriton,
# asked for by name), plus py-spy for profiles. Safe to run again: a venv whose
# server command already exists is left as it is.
#
#     bash bench/setup_peers.sh            # everything
#     bash bench/setup_peers.sh azmlinfsrv # just the named peers (azmlinfsrv litserve ray)
#     bash bench/setup_peers.sh mlserver kserve pytriton   # the V2 peers
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venvs="$here/.venvs"
python="${PEER_PYTHON:-python3.11}"  # the peers' wheels all exist for 3.11
# uv from PATH, else the project's virtual environment (a new shell has no venv active)
uv="${UV:-$(command -v uv || echo "$here/../.venv/bin/uv")}"
peers=("$@")
[ ${#peers[@]} -eq 0 ] && peers=(azmlinfsrv litserve ray)

need_apt=()
command -v wrk >/dev/null || need_apt+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need_apt+=(nginx-light)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need_apt+=(haproxy)
if [ ${#need_apt[@]} -gt 0 ] && ! command -v apt-get >/dev/null; then
    echo "bench: apt-get not available; install ${need_apt[*]} yourself (bench/peers.py skips a missing peer)" >&2
elif [ ${#need_apt[@]} -gt 0 ]; then
    sudo_="" && [ "$(id -u)" -ne 0 ] && sudo_="sudo"
    $sudo_ apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
    # Debian starts nginx and haproxy as services on install; the bench runs its own, so stop those.
    $sudo_ service nginx stop >/dev/null 2>&1 || true
    $sudo_ service haproxy stop >/dev/null 2>&1 || true
fi

mkvenv() {  # name, command that proves it is installed, packages...
    local name="$1" probe="$2"
    shift 2
    if [ -x "$venvs/$name/bin/$probe" ]; then
        echo "bench: $name already installed"
        return
    fi
    echo "bench: installing $name into $venvs/$name"
    "$uv" venv -q --python "$python" "$venvs/$name"
    "$uv" pip install -q --python "$venvs/$name/bin/python" "$@"
}

for p in "${peers[@]}"; do
    case "$p" in
        azmlinfsrv) mkvenv azmlinfsrv azmlinfsrv "azureml-inference-server-http==1.5.1" ;;
        litserve) mkvenv litserve litserve "litserve==0.2.19" ;;
        ray) mkvenv ray serve "ray[serve]==2.60.0" ;;
        mlserver) mkvenv mlserver mlserver "mlserver==1.7.1" ;;
        kserve) mkvenv kserve python "kserve==0.21.0" ;;
        pytriton) mkvenv pytriton python "nvidia-pytriton" ;;
        *) echo "bench: unknown peer $p (azmlinfsrv litserve ray mlserver kserve pytriton)" >&2; exit 2 ;;
    esac
done
command -v py-spy >/dev/null || "$python" -m pip install -q py-spy || echo "bench: py-spy not installed (profiles only)" >&2
echo "bench: peers ready under $venvs"
