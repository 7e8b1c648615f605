"""The shopper's privacy pages on the web: the policy, and deletion or export of their data
confirmed with a one-time code sent to their email."""
