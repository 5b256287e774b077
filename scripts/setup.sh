#!/usr/bin/env bash
# One-time host set-up for eniplane: Debian packages, kernel headers for bcc, bpffs, and the venv.
# Contract: idempotent; a second run only checks and returns in well under a second or two.
# Refuses (exit 1, one clear line) when not root, the kernel is older than 5.15, or BPF cannot load.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV="$ROOT/.venv"
STAMP="$VENV/.eniplane-installed"
# ruby only parses the Vagrantfile in the tests; the VM itself cannot boot on every host. gcc and
# libc6-dev build the e2e tests' short-connection client (tests/e2e/shortconn.c).
# traceroute shows the node as a hop in the IPv4 paths e2e test.
PKGS=(python3-bpfcc iproute2 python3-venv ethtool nftables iputils-ping traceroute ruby gcc libc6-dev)

die() { echo "setup: $*" >&2; exit 1; }
say() { echo "setup: $*" >&2; }

# The `eniplane` command on PATH: a two-line launcher into the venv. A file there that does not
# carry our marker is someone else's (another install, a package) and is never overwritten.
LAUNCHER_DIR=${ENIPLANE_LAUNCHER_DIR:-/usr/local/bin}
LAUNCHER_MARK="# eniplane launcher, written by scripts/setup.sh (safe to delete)"
install_launcher() {
    local dest="$LAUNCHER_DIR/eniplane" want
    want=$(printf '#!/bin/sh\n%s\nexec "%s/bin/eniplane" "$@"' "$LAUNCHER_MARK" "$VENV")
    if [ -e "$dest" ] || [ -L "$dest" ]; then
        if ! grep -qxF "$LAUNCHER_MARK" "$dest" 2>/dev/null; then
            say "left $dest alone (not eniplane's launcher); the command is $VENV/bin/eniplane"
            return 0
        fi
        [ "$(cat "$dest")" = "$want" ] && return 0
    fi
    mkdir -p "$LAUNCHER_DIR" || die "cannot create $LAUNCHER_DIR"
    local tmp="$dest.tmp.$$"
    printf '%s\n' "$want" >"$tmp" && chmod 755 "$tmp" && mv -f "$tmp" "$dest" \
        || { rm -f "$tmp"; die "cannot write $dest"; }
    say "installed $dest (runs $VENV/bin/eniplane)"
}
if [ "${1:-}" = --launcher ]; then  # only the launcher (the tests use this with a temporary dir)
    install_launcher
    exit 0
fi

[ "$(id -u)" = 0 ] || die "must run as root (eniplane loads BPF programs and creates network namespaces)"

kver=$(uname -r)
kmaj=${kver%%.*}; rest=${kver#*.}; kmin=${rest%%.*}
if [ "$kmaj" -lt 5 ] || { [ "$kmaj" -eq 5 ] && [ "$kmin" -lt 15 ]; }; then
    die "kernel $kver is older than 5.15; eniplane needs BPF features from 5.15 on"
fi

. /etc/os-release
arch=$(dpkg --print-architecture)
export DEBIAN_FRONTEND=noninteractive
updated=0
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
apt_install() {  # apt_install PKG...: 0 when all installed
    if [ "$updated" = 0 ]; then apt-get update -qq >/dev/null; updated=1; fi
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1
}
first_of() {  # first_of WHAT ALTERNATIVE...: install the first alternative the archive has
    local what=$1; shift
    for alt in "$@"; do
        say "installing $alt ($what)"
        apt_install $alt && return 0
    done
    die "could not install $what (tried: $*)"
}

missing=()
for p in "${PKGS[@]}"; do installed "$p" || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${missing[*]}"
    apt_install "${missing[@]}" || die "apt-get install ${missing[*]} failed"
fi
# Kernel headers for bcc, unless this kernel's tree is already there (or linked, below).
if [ ! -e "/lib/modules/$kver/build/include" ] && ! ls -d /usr/src/linux-headers-* >/dev/null 2>&1; then
    if [ "${ID:-}" = ubuntu ]; then
        first_of "kernel headers" "linux-headers-$kver" linux-headers-generic
    else
        first_of "kernel headers" "linux-headers-$kver" "linux-headers-$arch"
    fi
fi
# bpftool: a package of its own on Debian, part of linux-tools on Ubuntu.
if ! command -v bpftool >/dev/null 2>&1; then
    if [ "${ID:-}" = ubuntu ]; then
        first_of bpftool "linux-tools-common linux-tools-$kver" "linux-tools-common linux-tools-generic"
    else
        first_of bpftool bpftool
    fi
fi

# bcc compiles against /lib/modules/$(uname -r)/{build,source}. XDP/TC programs only need uapi
# headers, so when this kernel has none we point bcc at the newest installed header tree.
moddir="/lib/modules/$kver"
if [ ! -e "$moddir/build/include" ] && [ ! -e "$moddir/source/include" ]; then
    build=$(ls -d /usr/src/linux-headers-*/ 2>/dev/null | grep -v -- '-common/$' | sort -V | tail -n1)
    build=${build%/}
    [ -n "$build" ] || die "no kernel headers under /usr/src; install linux-headers for your kernel"
    common="${build%-*}-common"
    [ -d "$common" ] || common="$build"
    mkdir -p "$moddir"
    ln -sfn "$build" "$moddir/build"
    ln -sfn "$common" "$moddir/source"
    say "linked $moddir/build -> $build and source -> $common (no headers for $kver)"
fi

if ! mountpoint -q /sys/fs/bpf; then
    mount -t bpf bpf /sys/fs/bpf || die "cannot mount bpffs on /sys/fs/bpf"
fi

if [ ! -x "$VENV/bin/python" ]; then
    /usr/bin/python3 -m venv --system-site-packages "$VENV" || die "cannot create $VENV"
fi
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
    say "installing eniplane into $VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check -e "$ROOT[test]" >/dev/null \
        || die "pip install of eniplane failed"
    touch "$STAMP"
fi

install_launcher

# Prove that this kernel lets us load BPF: a two-instruction socket filter, no compiler needed.
"$VENV/bin/python" -m eniplane.bpfsys --probe || die "this kernel refuses to load BPF programs (need root with CAP_BPF, CAP_NET_ADMIN)"
