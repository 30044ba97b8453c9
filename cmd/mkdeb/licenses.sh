#!/usr/bin/env bash
# licenses.sh BINARY OUTDIR: copies the licence texts of everything linked
# into BINARY (Go itself, every module `go version -m` lists, and this
# project's own LICENSE if there is one) into OUTDIR, one file per module,
# named after the module path with / as _. The image and the Debian package
# ship them. Fails if a linked module has no licence file, so a new
# dependency cannot slip in without one.
set -euo pipefail
bin=$1 out=$2
mkdir -p "$out"
cp "$(go env GOROOT)/LICENSE" "$out/go"
root=$(dirname "$(go env GOMOD)")
for f in LICENSE LICENSE.txt COPYING; do
	if [ -f "$root/$f" ]; then cp "$root/$f" "$out/glance-image-sync"; break; fi
done
go version -m "$bin" | awk '$1 == "dep" { print $2 }' | while read -r mod; do
	dir=$(go list -m -f '{{.Dir}}' "$mod")
	lic=
	for f in LICENSE LICENSE.txt LICENSE.md COPYING LICENCE; do
		if [ -f "$dir/$f" ]; then lic=$dir/$f; break; fi
	done
	if [ -z "$lic" ]; then
		echo "licenses.sh: no licence file in $dir ($mod)" >&2
		exit 1
	fi
	cp "$lic" "$out/${mod//\//_}"
	# Apache-2.0 asks for the NOTICE to travel with the work.
	if [ -f "$dir/NOTICE" ]; then cp "$dir/NOTICE" "$out/${mod//\//_}.NOTICE"; fi
done
chmod 0644 "$out"/*
