#!/usr/bin/env bash
# The customer screen on the kiosk's display: wait until the kiosk process (facepay-kiosk.service)
# answers on 127.0.0.1, then show its page full screen in Chromium's kiosk mode, and show it
# again if Chromium ever exits, so the shopper never sees a desktop.
#
# Run it as the graphical session of an unprivileged, auto-logged-in user, e.g. under the
# `cage` Wayland kiosk compositor (`cage -- /opt/facepay/deploy/kiosk/kiosk-session.sh`) or
# from an X session's autostart. FACEPAY_SCREEN_PORT (8080) and CHROMIUM (chromium) override
# the defaults.
set -uo pipefail

port="${FACEPAY_SCREEN_PORT:-8080}"
url="http://127.0.0.1:${port}/"
chromium="${CHROMIUM:-chromium}"

log() { echo "kiosk-session: $*" >&2; }

# True once GET /state answers 200 (bash's /dev/tcp: no curl needed on the kiosk).
answers() {
  local status
  exec 3<>"/dev/tcp/127.0.0.1/${port}" 2>/dev/null || return 1
  printf 'GET /state HTTP/1.0\r\nHost: 127.0.0.1:%s\r\n\r\n' "$port" >&3
  IFS= read -r -t 5 status <&3 || status=""
  exec 3<&- 3>&-
  [[ "$status" =~ ^HTTP/1\.[01]\ 200 ]]
}

wait_for_screen() {
  local waited=0
  until answers; do
    if (( waited % 30 == 0 )); then log "waiting for the kiosk process at ${url}"; fi
    sleep 1
    waited=$((waited + 1))
  done
}

if ! command -v "$chromium" >/dev/null 2>&1; then
  log "${chromium} is not installed (apt-get install chromium)"
  exit 1
fi

# A throwaway profile on tmpfs: nothing the page shows outlives the session.
profile_root="${XDG_RUNTIME_DIR:-/tmp}"
profile=$(mktemp -d "${profile_root}/facepay-screen.XXXXXX")
trap 'rm -rf "$profile"' EXIT
trap 'exit 0' INT TERM

while true; do
  wait_for_screen
  log "showing ${url}"
  "$chromium" \
    --kiosk \
    --app="$url" \
    --noerrdialogs \
    --disable-infobars \
    --no-first-run \
    --no-default-browser-check \
    --disable-session-crashed-bubble \
    --disable-features=Translate,TranslateUI \
    --disable-pinch \
    --overscroll-history-navigation=0 \
    --password-store=basic \
    --disk-cache-size=1 \
    --user-data-dir="$profile" \
    || log "chromium exited with status $?"
  sleep 1
done
