#!/usr/bin/env bash
# Check the protos for breaking changes against a base revision (default: the previous commit,
# BUF_BREAKING_BASE to override, e.g. origin/main in a branch). buf cannot read the base straight
# from git here: the googleapis protos we import are copied into .third_party/ (git-ignored), so
# the base tree is exported, given the same .third_party/, and built into an image first.
set -euo pipefail
base="${BUF_BREAKING_BASE:-HEAD~1}"
buf="${BUF:-.venv/bin/buf}"
if ! git rev-parse -q --verify "$base^{commit}" >/dev/null; then
  echo "buf breaking: no base revision $base (a first commit or a shallow clone); skipped"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if ! git archive "$base" buf.yaml proto 2>/dev/null | tar -x -C "$tmp"; then
  echo "buf breaking: $base has no protos yet; skipped"
  exit 0
fi
cp -r .third_party "$tmp/"
(cd "$tmp" && "$OLDPWD/$buf" build -o "$tmp/base.binpb")
"$buf" build -o "$tmp/head.binpb"
"$buf" breaking "$tmp/head.binpb" --against "$tmp/base.binpb" --config buf.yaml
echo "buf breaking: no breaking change against $base"
