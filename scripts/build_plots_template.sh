#!/usr/bin/env bash
# Rebuild .dvc/plots/offline.html: DVC's plots page with Vega, Vega-Lite and Vega-Embed inlined, so
# `dvc plots show` renders offline (DVC's own page loads them from a CDN). Needs npm (the npm registry);
# the result is committed, so users need neither. Versions are the ones DVC's own page uses.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2 >/dev/null)
for t in "$work"/*.tgz; do tar xzf "$t" -C "$work" --one-top-level="$(basename "$t" .tgz)"; done
out=.dvc/plots/offline.html
{
  printf '<!DOCTYPE html>\n<html>\n<head>\n{refresh_tag}\n<meta charset="utf-8">\n<title>exdd plots</title>\n'
  printf '<style>body{font-family:sans-serif} table{border-spacing:15px}</style>\n'
  for pkg in vega-5.20.2:vega vega-lite-5.2.0:vega-lite vega-embed-6.18.2:vega-embed; do
    dir=${pkg%%:*}; name=${pkg##*:}
    printf '<!-- %s: BSD-3-Clause, %s -->\n<script>\n' "$dir" "$(head -1 "$work/$dir/package/LICENSE")"
    cat "$work/$dir/package/build/$name.min.js"
    printf '\n</script>\n'
  done
  printf '</head>\n<body>\n{plot_divs}\n</body>\n</html>\n'
} > "$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $out ($(wc -c < "$out") bytes)"
