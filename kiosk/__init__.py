"""The kiosk at the till: frames in, sealed templates out; no image ever leaves it."""
