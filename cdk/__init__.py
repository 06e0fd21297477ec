"""The kaos CDK app: one stack composed of one construct per concern (see cdk/app.py)."""
