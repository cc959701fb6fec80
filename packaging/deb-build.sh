#!/bin/sh
# Builds the Debian packages heliosd and heliosd-dev from packaging/debian/
# with dpkg-buildpackage -b -us -uc, in a copy of the source tree (dpkg
# wants debian/ at the top), and runs lintian on them.
#   packaging/deb-build.sh [OUT_DIR]     the .debs land in OUT_DIR (build-deb/)
# No network: the QuickJS tarball comes from .cache/ (a build fetches it).
set -eu
cd "$(dirname "$0")/.."
src=$(pwd)
out=${1:-$src/build-deb}
version=$(dpkg-parsechangelog -l packaging/debian/changelog -S Version)
if [ ! -f .cache/qjsc-0.3.0.tgz ]; then
    echo "deb-build.sh: .cache/qjsc-0.3.0.tgz missing: build the tree once first (packaging/build.sh)" >&2
    exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tree=$work/heliosd-$version
mkdir "$tree"
# the sources as they are (committed or not), without build trees
tar -C "$src" --exclude='./build*' --exclude=./.git --exclude=./conf.d/admin.secret \
    --exclude='__pycache__' -cf - . | tar -C "$tree" -xf -
cp -r packaging/debian "$tree/debian"
(cd "$tree" && dpkg-buildpackage -b -us -uc -j"$(nproc)" >"$work/build.log" 2>&1) || {
    tail -n 60 "$work/build.log" >&2
    echo "deb-build.sh: dpkg-buildpackage failed (last lines above)" >&2
    exit 1
}
mkdir -p "$out"
rm -f "$out"/*.deb
cp "$work"/*.deb "$out"/
# lintian on the packages: clean, or each remaining tag explained in
# packaging/debian/*.lintian-overrides (warnings fail too)
lintian --fail-on error,warning "$out"/heliosd_"$version"_*.deb "$out"/heliosd-dev_"$version"_*.deb
ls "$out"/*.deb
