"""sns-relay: the producer side and shared core. Never imports boto3 or `workers`."""
