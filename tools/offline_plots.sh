#!/usr/bin/env bash
# Builds .dvc/plots/offline.html: DVC's plots page template with vega, vega-lite and
# vega-embed inlined (the versions DVC's own page loads from a CDN), so `dvc plots show`
# and `dvc plots diff` render on machines without internet. Needs npm (the npm registry).
# .dvc/config points plots.html_template at the result; it is committed, so users never run this.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
packages="vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2"
(cd "$work" && npm pack --silent $packages >/dev/null && for f in *.tgz; do mkdir "${f%.tgz}" && tar xzf "$f" -C "${f%.tgz}"; done)
out=.dvc/plots/offline.html
{
  echo '<!DOCTYPE html>'
  echo "<!-- Built by tools/offline_plots.sh from npm: $packages (each BSD-3-Clause, (c) University of Washington Interactive Data Lab). -->"
  echo '<html><head>{refresh_tag}<meta charset="utf-8"><title>DVC Plot</title>'
  for js in vega-5.20.2/package/build/vega.min.js vega-lite-5.2.0/package/build/vega-lite.min.js \
            vega-embed-6.18.2/package/build/vega-embed.min.js; do
    echo "<script>"; cat "$work/$js"; echo; echo "</script>"
  done
  echo '<style>table { border-spacing: 15px; }</style></head><body>{plot_divs}</body></html>'
} > "$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $out ($(wc -c < "$out") bytes)"
