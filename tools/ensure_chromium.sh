#!/usr/bin/env bash
# The rendered-book check drives headless Chromium. Install Debian's package when it is missing.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "setup: installing Debian's chromium for the headless book check (~1-2 min)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
else
  echo "setup: chromium is missing; install it (e.g. 'sudo apt-get install chromium') to check the rendered book" >&2
  exit 1
fi
