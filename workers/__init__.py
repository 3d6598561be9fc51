"""The consumer side: workers that take bundles from Redis and publish them to SNS.

The only package that talks to AWS (`relay` never imports it, nor boto3).
"""
