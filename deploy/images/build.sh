#!/usr/bin/env bash
# Builds haroute's container images on a Docker engine that reaches no image registry.
#
#   haroute/debian:bookworm  Debian 12 minbase, made here: debootstrap + docker import
#   haroute/base             + python3, haroute (a wheel of this checkout), supervisord,
#                            HAProxy, tini: supervisord runs the app beside announce
#                            (and a sidecar lb when LISTEN_PATH is set)
#   haroute/frontend         haroute-lb as PID 1 under tini; it spawns HAProxy itself
#   haroute/register         haroute-register, RUNTIME=docker (mount the Docker socket)
#   haroute/etcd             Debian's etcd-server, a single member for one-host stacks
#   haroute/example          base + the example web app and TCP "database" of compose.yaml
#
# Usage: deploy/images/build.sh [IMAGE...]     (default: all of them, in the order above)
#
# Idempotent: the OS image is made only when the engine lacks it (its debootstrap tarball
# is cached outside the checkout, so a new engine only imports it again), and docker build
# reuses its layer cache. Nothing is written into the checkout.
#
# Environment:
#   DOCKER_HOST             the engine to build on (the docker client's own variable)
#   DOCKER                  the docker client (default: docker)
#   HAROUTE_CACHE           cache directory (default: ~/.cache/haroute)
#   DEBIAN_MIRROR           mirror for debootstrap (default: the one this host's apt uses
#                           for bookworm, from /etc/apt/sources.list*)
#   DEBIAN_SECURITY_MIRROR  security mirror written into the image's apt sources (default:
#                           the one this host's apt uses for bookworm-security, if any)
#   IMAGE_PREFIX            (default: haroute)      IMAGE_TAG (default: latest)
#   PYTHON                  the Python whose pip builds the wheelhouse (default: the
#                           checkout's .venv, else python3); pip must reach an index
#   REBUILD_OS=1            debootstrap again and re-import the OS image
#   PIP_CONSTRAINT          pip's own variable: pin the wheelhouse's versions
#
# What runs inside the image builds: apt-get (Debian's mirror, through the engine's
# network) and pip install --no-index from the wheelhouse (no PyPI access needed).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
docker=${DOCKER:-docker}
cache=${HAROUTE_CACHE:-${HOME:-/root}/.cache/haroute}
prefix=${IMAGE_PREFIX:-haroute}
tag=${IMAGE_TAG:-latest}
suite=bookworm
os_image="$prefix/debian:$suite"
all=(base frontend register etcd example)

say() { printf 'build.sh: %s\n' "$*" >&2; }
die() {
  say "error: $*"
  exit 1
}

# --- where this host's apt gets Debian from --------------------------------------------

# apt_uri SUITE: the first URI this host's apt sources use for SUITE (deb822 .sources
# files, then one-line .list files). Nothing else is assumed about the mirror.
apt_uri() {
  local suite=$1 f
  {
    for f in /etc/apt/sources.list.d/*.sources; do
      [ -f "$f" ] || continue
      awk -v suite="$suite" '
        BEGIN { RS = ""; FS = "\n" }
        {
          types = ""; uris = ""; suites = ""; enabled = "yes"
          for (i = 1; i <= NF; i++) {
            line = $i
            if (line ~ /^[ \t]*#/) continue
            key = tolower(line); sub(/:.*/, "", key)
            value = line; sub(/^[^:]*:[ \t]*/, "", value)
            if (key == "types") types = value
            else if (key == "uris") uris = value
            else if (key == "suites") suites = value
            else if (key == "enabled") enabled = tolower(value)
          }
          if ((" " types " ") ~ / deb / && (" " suites " ") ~ (" " suite " ") && enabled != "no") {
            split(uris, u, /[ \t]+/); print u[1]; exit
          }
        }' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
      [ -f "$f" ] || continue
      awk -v suite="$suite" '
        $1 == "deb" {
          i = 2
          if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
          if ($(i + 1) == suite) { print $i; exit }
        }' "$f"
    done
  } | head -n 1
}

# --- the OS image ----------------------------------------------------------------------

work=$(mktemp -d "${TMPDIR:-/tmp}/haroute-build.XXXXXX")
cleanup() {
  # debootstrap mounts /proc and /sys in the chroot; a failed run can leave them.
  awk -v w="$work" '$2 == w || index($2, w "/") == 1 { print $2 }' /proc/mounts |
    sort -r | while read -r point; do umount -l "$point" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

make_os_tarball() {
  local tarball=$1 rootfs mirror security
  [ "$(id -u)" = 0 ] || die "debootstrap needs root (or copy $tarball from a machine that made it)"
  command -v debootstrap >/dev/null || die "debootstrap not found: apt-get install debootstrap"
  mirror=${DEBIAN_MIRROR:-$(apt_uri "$suite")}
  [ -n "$mirror" ] || die "no apt source for $suite in /etc/apt/sources.list*; set DEBIAN_MIRROR"
  security=${DEBIAN_SECURITY_MIRROR:-$(apt_uri "$suite-security")}
  # On the cache's file system, not /tmp: a noexec /tmp breaks the chroot.
  mkdir -p "$cache"
  rootfs=$(mktemp -d "$cache/rootfs.XXXXXX")
  # shellcheck disable=SC2064 # expand now: the path is fixed
  trap "cleanup; rm -rf '$rootfs'" EXIT
  say "debootstrap --variant=minbase $suite from $mirror (takes a few minutes)"
  debootstrap --variant=minbase "$suite" "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 ||
    die "debootstrap failed; the end of its log:$(printf '\n')$(tail -n 20 "$work/debootstrap.log")"

  # Make it a container base image, as Debian's official images are.
  # The engine provides these at run time; the host's own must not ship in the image.
  rm -f "$rootfs/etc/hostname" "$rootfs/etc/resolv.conf" "$rootfs/etc/apt/sources.list"
  {
    printf 'Types: deb\nURIs: %s\nSuites: %s %s-updates\nComponents: main\n' \
      "$mirror" "$suite" "$suite"
    printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
    if [ -n "$security" ]; then
      printf '\nTypes: deb\nURIs: %s\nSuites: %s-security\nComponents: main\n' "$security" "$suite"
      printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
    fi
  } >"$rootfs/etc/apt/sources.list.d/debian.sources"
  # No package may start a service during an image build.
  printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
  chmod 755 "$rootfs/usr/sbin/policy-rc.d"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/* "$rootfs"/tmp/*
  tar --numeric-owner --xattrs -C "$rootfs" \
    --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
  rm -rf "$rootfs"
  trap cleanup EXIT
  say "cached the rootfs in $tarball ($(du -h "$tarball" | cut -f1))"
}

ensure_os_image() {
  local tarball="$cache/debian-$suite-minbase.tar"
  if [ "${REBUILD_OS:-0}" != 1 ] && "$docker" image inspect "$os_image" >/dev/null 2>&1; then
    say "$os_image: present"
    return
  fi
  if [ "${REBUILD_OS:-0}" = 1 ] || [ ! -s "$tarball" ]; then
    make_os_tarball "$tarball"
  fi
  say "docker import $tarball as $os_image"
  "$docker" import -c 'CMD ["/bin/bash"]' -c 'ENV LANG=C.UTF-8' "$tarball" "$os_image" >/dev/null
}

# --- the wheelhouse: haroute and its dependencies, for the image's Python --------------

build_wheelhouse() {
  local py=${PYTHON:-} arch src
  if [ -z "$py" ]; then
    if [ -x "$root/.venv/bin/python" ]; then py="$root/.venv/bin/python"; else py=python3; fi
  fi
  case "$("$docker" version --format '{{.Server.Arch}}')" in
    amd64 | x86_64) arch=x86_64 ;;
    arm64 | aarch64) arch=aarch64 ;;
    *) die "unsupported engine architecture: $("$docker" version --format '{{.Server.Arch}}')" ;;
  esac
  # Build from a copy: building in the checkout would leave build/ and *.egg-info there.
  src="$work/src"
  mkdir -p "$src" "$work/ctx/wheels"
  tar -C "$root" --exclude=__pycache__ -c pyproject.toml README.md \
    discovery announce register lb haproxy | tar -x -C "$src"
  say "wheelhouse: haroute from $root, dependencies for CPython 3.11 on $arch"
  "$py" -m pip wheel -q --no-deps --disable-pip-version-check -w "$work/ctx/wheels" "$src"
  # Debian 12's python3 is 3.11 with glibc 2.36: binary wheels for exactly that.
  "$py" -m pip download -q --disable-pip-version-check -d "$work/ctx/wheels" \
    --only-binary=:all: --implementation cp --python-version 3.11 \
    --platform "manylinux_2_36_$arch" --platform "manylinux_2_28_$arch" \
    --platform "manylinux_2_17_$arch" --platform "manylinux2014_$arch" \
    "$work"/ctx/wheels/haroute-*.whl
}

# --- the images ------------------------------------------------------------------------

build_image() {
  local name=$1
  say "docker build $prefix/$name:$tag"
  "$docker" build -q -t "$prefix/$name:$tag" -f "$work/ctx/Dockerfile.$name" \
    --build-arg "OS_IMAGE=$os_image" --build-arg "BASE_IMAGE=$prefix/base:$tag" \
    "$work/ctx" >/dev/null
}

main() {
  local wanted=("$@") name
  [ ${#wanted[@]} -gt 0 ] || wanted=("${all[@]}")
  for name in "${wanted[@]}"; do
    [ -f "$here/Dockerfile.$name" ] || die "no such image: $name (one of: ${all[*]})"
  done
  command -v "$docker" >/dev/null || die "$docker not found (apt-get install docker.io)"
  "$docker" version --format '{{.Server.Version}}' >/dev/null ||
    die "cannot reach the Docker engine (DOCKER_HOST=${DOCKER_HOST:-unset})"
  ensure_os_image
  mkdir -p "$work/ctx"
  cp -a "$here"/Dockerfile.* "$here/rootfs" "$here/example" "$work/ctx/"
  for name in "${wanted[@]}"; do
    if [ "$name" = base ]; then build_wheelhouse; fi
  done
  for name in "${wanted[@]}"; do build_image "$name"; done
  say "done: $os_image$(printf ' %s' "${wanted[@]/#/$prefix/}")"
}

main "$@"
