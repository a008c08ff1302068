#!/usr/bin/env bash
# Debian's Chromium and ChromeDriver for the console's browser test (tests/integration/
# test_console.py), installed once with apt; nothing is downloaded at test time. Where apt or root
# is missing, say so and go on: that test then skips with the same message.
set -uo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "install_browser: no apt-get here; install Chromium and ChromeDriver yourself for the console's browser test" >&2
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
        echo "install_browser: not root and no sudo: run 'apt-get install chromium chromium-driver' as root for the console's browser test" >&2
        exit 0
    fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null \
    || echo "install_browser: apt-get could not install chromium and chromium-driver; the console's browser test will skip" >&2
exit 0
