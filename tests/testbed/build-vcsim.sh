#!/bin/bash
# Builds the vSphere simulator test bed (tests/vcsim/main.go, on govmomi 0.24.2 from Debian) as
# <outdir>/vcsim-bed, in GOPATH mode so no module download is needed. Rebuilds only when the binary
# is missing or older than main.go or this script. The last stdout line is the binary's path.
# Usage: bash tests/testbed/build-vcsim.sh <outdir>
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 <outdir>" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../vcsim" && pwd)
mkdir -p "$1"
out=$(cd "$1" && pwd)
bin="$out/vcsim-bed"
# One build at a time (test processes may ask together).
exec 9>"$out/.build-lock"
flock 9
gocode=/usr/share/gocode

if ! command -v go >/dev/null 2>&1 || [ ! -d "$gocode/src/github.com/vmware/govmomi/simulator" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq </dev/null >&2
  apt-get install -y -qq golang-go golang-github-vmware-govmomi-dev </dev/null >&2
fi

if [ ! -x "$bin" ] || [ "$src/main.go" -nt "$bin" ] || [ "$here/build-vcsim.sh" -nt "$bin" ]; then
  # CI may have no $HOME: give go every directory it would otherwise derive from it.
  mkdir -p "$out/gocache"
  (cd "$src" && env GOPATH="$gocode" GO111MODULE=off GOFLAGS= GOCACHE="$out/gocache" \
     GOENV=off HOME="${HOME:-$out}" go build -o "$bin.tmp" .) </dev/null >&2
  mv -f "$bin.tmp" "$bin"
fi
echo "$bin"
