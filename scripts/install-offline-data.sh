#!/usr/bin/env bash
# Best effort: install Debian's Fashion-MNIST package (real data, offline) where apt is available and
# we are root. dpbench finds it in /usr/share/datasets/fashion-mnist without configuration; without
# it, dpbench falls back to scikit-learn's bundled 8x8 digits.
set -u
[ -d /usr/share/datasets/fashion-mnist ] && exit 0
command -v apt-get >/dev/null 2>&1 || { echo "no apt-get: skipping Fashion-MNIST (digits fallback)"; exit 0; }
[ "$(id -u)" = 0 ] || { echo "not root: skipping Fashion-MNIST (digits fallback)"; exit 0; }
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
  || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; } \
  || echo "could not install dataset-fashion-mnist: dpbench will use the digits fallback"
exit 0
