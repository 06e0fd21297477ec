"""Event and Step Functions task Lambdas: each handler adapts an event onto one chalicelib service call."""
