"""The SDK: what services import to send step events (the sender, later the client and runs)."""
