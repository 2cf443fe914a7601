#!/usr/bin/env bash
# Build the Debian 12 systemd test image with debootstrap and import it into Podman.
# The image is tagged with a hash of this recipe: when the recipe is unchanged the
# existing image is reused and nothing is rebuilt.
#
#   tests/harness/build-image.sh            build if needed, print the image name
#   FORCE=1 tests/harness/build-image.sh    rebuild
#
# Environment: TEST_IMAGE (default localhost/llmfleet-debian12),
#              DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"

image="${TEST_IMAGE:-localhost/llmfleet-debian12}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
suite=bookworm
packages=systemd,systemd-sysv,dbus,python3,python3-apt,sudo,iproute2,procps,ca-certificates,curl,gnupg

# The recipe is this file plus the inputs above.
recipe_hash="$(cat "$0" <(echo "$mirror $suite $packages") | sha256sum | cut -c1-12)"

if [[ -z "${FORCE:-}" ]] && podman image exists "$image:$recipe_hash"; then
  podman tag "$image:$recipe_hash" "$image:latest"
  echo "$image:latest (cached, recipe $recipe_hash)"
  exit 0
fi

rootfs="$(mktemp -d /var/tmp/llmfleet-rootfs.XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT

echo "building $image:$recipe_hash from $mirror ($suite)" >&2
debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" "$mirror" >&2

# A real host has apt sources; the minbase image has none.
security_mirror="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
cat > "$rootfs/etc/apt/sources.list" <<SOURCES
deb $mirror $suite main contrib non-free non-free-firmware
deb $mirror $suite-updates main contrib non-free non-free-firmware
deb $security_mirror $suite-security main contrib non-free non-free-firmware
SOURCES
# Containers have no console to log in on and no udev to settle.
for unit in getty@tty1.service console-getty.service systemd-udevd.service \
            systemd-udev-trigger.service systemd-firstboot.service; do
  ln -sf /dev/null "$rootfs/etc/systemd/system/$unit"
done
# Each container gets its own machine id at first boot.
: > "$rootfs/etc/machine-id"
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*

# mktemp made the directory 0700, and tar records that as the image's "/": images
# built on this one would then deny every other user a path lookup (Docker's vfs
# keeps the mode; a non-root service cannot stat its own binary).
chmod 0755 "$rootfs"
tar -C "$rootfs" -c . | podman import \
  --change 'CMD ["/sbin/init"]' \
  --change 'ENV container=podman' \
  --change 'STOPSIGNAL SIGRTMIN+3' \
  - "$image:$recipe_hash" >&2
podman tag "$image:$recipe_hash" "$image:latest"
echo "$image:latest (built, recipe $recipe_hash)"
