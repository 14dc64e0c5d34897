#!/usr/bin/env bash
# The browser the chat page test (tests/serving/test_ui.py) drives: Debian's chromium at /usr/bin/chromium,
# through Playwright's Python package (no `playwright install` download). Installs it when it is missing and this
# is root on a machine with apt-get; otherwise says what to install and exits 0 (the test then skips, unless
# ONELLM_REQUIRE_BROWSER=1, where it fails).
set -euo pipefail

CHROMIUM=/usr/bin/chromium

if [ -x "$CHROMIUM" ]; then
  echo "setup_browser: $CHROMIUM present ($("$CHROMIUM" --version 2>/dev/null || echo 'version unknown'))"
  exit 0
fi

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "setup_browser: installing chromium with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq chromium >/dev/null
  echo "setup_browser: $("$CHROMIUM" --version 2>/dev/null || echo "chromium installed at $CHROMIUM")"
  exit 0
fi

cat <<'MSG'
setup_browser: /usr/bin/chromium is missing and cannot be installed here (needs root and apt-get).
  Debian/Ubuntu:  sudo apt-get install chromium
  Elsewhere:      any Chromium at /usr/bin/chromium (e.g. a symlink to your chromium binary).
The chat page test (tests/serving/test_ui.py) skips without it; ONELLM_REQUIRE_BROWSER=1 makes it fail instead.
MSG
exit 0
