"""Guess limits: failed step-ups counted in the database, per candidate shopper and per kiosk."""
