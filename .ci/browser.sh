# shellcheck shell=bash
# Sourced by .ci/run: make Debian's Chromium available to the browser tests
# (tests/app/test_browser_e2e.py drives /usr/bin/chromium through Playwright for Python).
# The browser comes from the distribution's package manager, never from a Playwright download.
# Returns non-zero (without exiting the caller's shell) when Chromium cannot be installed.
#   DSSM_CHROMIUM  path to check (default /usr/bin/chromium)

dssm_ensure_chromium() {
    local chromium="${DSSM_CHROMIUM:-/usr/bin/chromium}"
    local sudo=""
    if [ -x "$chromium" ]; then
        echo "browser: $("$chromium" --version 2>/dev/null || echo "$chromium")"
        return 0
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "browser: $chromium is missing and there is no apt-get to install it" >&2
        return 1
    fi
    if [ "$(id -u)" != "0" ]; then
        if command -v sudo >/dev/null 2>&1; then
            sudo="sudo -n"
        else
            echo "browser: $chromium is missing; installing it needs root (or sudo)" >&2
            return 1
        fi
    fi
    echo "browser: installing Debian's chromium package"
    if ! DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y chromium; then
        # a fresh machine may have empty package lists
        $sudo apt-get update &&
            DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y chromium || {
                echo "browser: could not install chromium" >&2
                return 1
            }
    fi
    if [ ! -x "$chromium" ]; then
        echo "browser: chromium installed but $chromium is still missing" >&2
        return 1
    fi
    echo "browser: $("$chromium" --version 2>/dev/null || echo "$chromium")"
}

# Playwright must never fetch its own browser builds.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
dssm_ensure_chromium
