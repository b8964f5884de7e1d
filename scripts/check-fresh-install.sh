#!/usr/bin/env bash
# Proves the README on a pristine Debian 12: builds a minimal bookworm root filesystem with
# mmdebstrap (variant minbase: no python3, no pip, no PostgreSQL, no Node.js, no CA bundle), copies
# a clean clone of this repository's HEAD into it and, inside a chroot, runs the README's setup,
# `drimbox selftest` and the demo until its exams are published (`--exit-after`).
# Needs root and the network (Debian, PyPI and npm registries only); takes minutes (4 to 16
# measured, mostly downloads: docs/deploy.md §10.1), so it stays out of the normal test run.
# Usage: sudo scripts/check-fresh-install.sh [WORKDIR]
# WORKDIR defaults to var/fresh-debian; its rootfs is rebuilt from scratch on every run.
set -euo pipefail
cd "$(dirname "$0")/.."

WORK="$(realpath -m "${1:-var/fresh-debian}")"
ROOTFS="$WORK/rootfs"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if [ "$(id -u)" -ne 0 ]; then
  echo "Ce contrôle construit un système Debian dans un chroot : lancez-le en root." >&2
  exit 1
fi
for tool in mmdebstrap unshare; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "==> apt-get install mmdebstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends mmdebstrap
  fi
done

# Every mount under the rootfs, deepest first (the /dev bind is recursive).
mounts_under() { findmnt -rn -o TARGET | grep "^$ROOTFS/" | sort -r || true; }
unmount_all() {
  local target
  for target in $(mounts_under); do umount -l "$target" 2>/dev/null || true; done
}
trap unmount_all EXIT
bind() { mkdir -p "$ROOTFS$2" && mount "${@:3}" "$1" "$ROOTFS$2"; }

step_start=$SECONDS
step() {
  echo "==> [$(date -u +%H:%M:%S)] $*"
  step_start=$SECONDS
}
took() { echo "    … $1 en $((SECONDS - step_start)) s"; }

step "rootfs Debian 12 minimal ($MIRROR, mmdebstrap --variant=minbase)"
unmount_all
# Never delete through a leftover bind mount of the host's /dev or /proc.
[ -z "$(mounts_under)" ] || { echo "$ROOTFS a encore des montages : $(mounts_under)" >&2; exit 1; }
rm -rf --one-file-system "$ROOTFS"
mkdir -p "$WORK"
mmdebstrap --quiet --variant=minbase bookworm "$ROOTFS" \
  "deb $MIRROR bookworm main" "deb $MIRROR bookworm-updates main" \
  "deb http://deb.debian.org/debian-security bookworm-security main"
took "rootfs ($(du -sh "$ROOTFS" | cut -f1))"
# What a pristine machine lacks, checked so that the run proves setup.sh installs it.
for absent in /usr/bin/python3 /usr/bin/npm /usr/bin/uv /usr/lib/postgresql /usr/bin/chromium; do
  [ ! -e "$ROOTFS$absent" ] || { echo "$absent déjà présent dans le rootfs" >&2; exit 1; }
done

# A host behind a TLS-inspecting proxy trusts extra CAs: the chroot needs them to reach PyPI and
# npm (ca-certificates, installed by setup.sh, adds them to the system bundle). None elsewhere.
local_cas=(/usr/local/share/ca-certificates/*.crt)
if [ -e "${local_cas[0]}" ]; then
  mkdir -p "$ROOTFS/usr/local/share/ca-certificates"
  cp "${local_cas[@]}" "$ROOTFS/usr/local/share/ca-certificates/"
  echo "    autorités locales de l'hôte copiées : ${#local_cas[@]}"
fi

step "clone propre du dépôt ($(git rev-parse --short HEAD))"
git clone --quiet --no-hardlinks "$PWD" "$ROOTFS/root/drimbox"
took "clone"

cp -L /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
bind proc /proc -t proc
bind sysfs /sys -t sysfs
bind /dev /dev --rbind
bind tmpfs /dev/shm -t tmpfs
bind tmpfs /tmp -t tmpfs

chroot_bash=(chroot "$ROOTFS" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin bash -c)
in_chroot() { "${chroot_bash[@]}" "cd /root/drimbox && $1"; }

step "README : ./scripts/setup.sh (premier lancement, dans le chroot)"
in_chroot ./scripts/setup.sh
took "setup"

step "setup.sh relancé : rien à installer"
in_chroot ./scripts/setup.sh
took "second setup"

# The node and the demo run in their own network namespace (only a loopback): their ports cannot
# meet the host's, and nothing they do reaches the network.
offline() {
  unshare --net -- bash -c '/usr/sbin/ip link set lo up && exec "$@"' _ "${chroot_bash[@]}" "cd /root/drimbox && $1"
}

step "uv run drimbox selftest"
offline "uv run drimbox selftest"
took "selftest"

step "README : ./scripts/demo.sh --exit-after"
offline "./scripts/demo.sh --exit-after"
took "demo"

echo "==> Debian 12 vierge : installation, selftest et démo réussis en $SECONDS s"
