"""The operator console: server-rendered pages for auditors, privacy officers and admins."""
