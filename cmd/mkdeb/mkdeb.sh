#!/usr/bin/env bash
# mkdeb.sh STAGE OUTDIR: builds the Debian package with dpkg-deb from a
# stage directory holding glance-image-sync (static binary),
# glance-image-sync.conf.example, help.txt (`glance-image-sync help`, made
# into the man page) and licenses/ (cmd/mkdeb/licenses.sh).
# Environment: VERSION (git describe), COMMIT, SOURCE_DATE_EPOCH, DEB_ARCH,
# DEB_MAINTAINER. The package installs files only: no maintainer scripts,
# so nothing is enabled or started by installing it (README.Debian says how).
# Reproducible: every mtime is SOURCE_DATE_EPOCH, owners are root, and
# dpkg-deb sorts entries and takes its own times from SOURCE_DATE_EPOCH.
set -euo pipefail
stage=$1 outdir=$2
# manpage HELP: a man page whose body is the tool's own help text, so the
# two cannot drift; roff's escape and control characters are neutralised.
manpage() {
	printf '.TH GLANCE-IMAGE-SYNC 1 "%s" "glance-image-sync %s"\n' "$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%d)" "$VERSION"
	printf '.SH NAME\nglance-image-sync \\- keep every glance-api node'"'"'s file-store images in sync\n'
	printf '.SH SYNOPSIS\n.B glance-image-sync\n[options] COMMAND\n.SH DESCRIPTION\n.nf\n'
	sed -e 's/\\/\\e/g' -e 's/^[.'"'"']/\\\&&/' "$1"
	printf '.fi\n.SH FILES\n/etc/glance/glance-image-sync.conf, /etc/glance/glance-api.conf\n'
	printf '.SH SEE ALSO\n/usr/share/doc/glance-image-sync/README.Debian\n'
}

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$(dirname "$here")")
: "${VERSION:?}" "${COMMIT:?}" "${SOURCE_DATE_EPOCH:?}" "${DEB_ARCH:?}" "${DEB_MAINTAINER:?}"
export SOURCE_DATE_EPOCH
# A Debian version starts with a digit: v1.2-3-gabc gives 1.2+3+gabc; a
# commit with no tag gives 0~git<commit date>.<describe>, which sorts below
# any tagged release.
# The Debian revision is -1: the package is built outside Debian's tools,
# and a version without one would mark it native.
if [[ $VERSION =~ ^v?[0-9]+\.[0-9] ]]; then
	DEB_VERSION=${VERSION#v}
else
	DEB_VERSION=0~git$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y%m%d).$VERSION
fi
DEB_VERSION=${DEB_VERSION//-/+}-1
out=$outdir/glance-image-sync_${DEB_VERSION}_${DEB_ARCH}.deb

root=$stage/root
doc=$root/usr/share/doc/glance-image-sync
rm -rf "$root"
install -d -m 0755 "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system" "$doc/licenses" \
	"$root/usr/share/man/man1" "$root/usr/share/lintian/overrides"
install -m 0755 "$stage/glance-image-sync" "$root/usr/bin/"
# The units and the cron line name /usr/local/bin (make build + install);
# the package's binary is /usr/bin.
for f in "$repo"/cmd/glance-image-sync/dist/*.service "$repo"/cmd/glance-image-sync/dist/*.timer; do
	sed 's#/usr/local/bin/glance-image-sync#/usr/bin/glance-image-sync#g' "$f" >"$root/lib/systemd/system/$(basename "$f")"
done
sed 's#/usr/local/bin/glance-image-sync#/usr/bin/glance-image-sync#g' \
	"$repo/cmd/glance-image-sync/dist/glance-image-sync.cron" >"$doc/glance-image-sync.cron"
install -m 0644 "$stage/glance-image-sync.conf.example" "$here/deb/README.Debian" "$doc/"
install -m 0644 "$stage"/licenses/* "$doc/licenses/"

install -m 0644 "$here/deb/lintian-overrides" "$root/usr/share/lintian/overrides/glance-image-sync"
manpage "$stage/help.txt" | gzip -n -9 >"$root/usr/share/man/man1/glance-image-sync.1.gz"

{
	sed "s/@YEAR@/$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y)/" "$here/deb/copyright"
	for f in "$stage"/licenses/*; do
		n=$(basename "$f")
		case "$n" in *.NOTICE) continue ;; esac
		printf '\n  %s: /usr/share/doc/glance-image-sync/licenses/%s\n' "$n" "$n"
	done
} >"$doc/copyright"

date=$(date -u -R -d "@$SOURCE_DATE_EPOCH")
printf 'glance-image-sync (%s) unstable; urgency=medium\n\n  * Built from commit %s.\n\n -- %s  %s\n' \
	"$DEB_VERSION" "$COMMIT" "$DEB_MAINTAINER" "$date" | gzip -n -9 >"$doc/changelog.Debian.gz"

chmod 0644 "$root"/usr/share/man/man1/* "$root"/lib/systemd/system/* "$doc"/*.cron "$doc/copyright" "$doc/changelog.Debian.gz"
# Apparent sizes: the same on every filesystem, so the control file is too.
size=$(du -s -k --apparent-size --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$DEB_VERSION/" -e "s/@ARCH@/$DEB_ARCH/" -e "s/@SIZE@/$size/" \
	-e "s/@MAINTAINER@/$DEB_MAINTAINER/" "$here/deb/control" >"$root/DEBIAN/control"
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\n' | LC_ALL=C sort | xargs md5sum) >"$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/md5sums"
find "$root" -type d -exec chmod 0755 {} +
find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
dpkg-deb --root-owner-group -Zxz --build "$root" "$out" >/dev/null
rm -rf "$root"
echo "$out"
