"""Repositories: the only code that reaches DynamoDB. One module per aggregate (jobs, grids, workspaces, and H3's
snapshots, provenance and triggers), each with a `Protocol` the services depend on, a pynamodb implementation over
the single table of chalicelib.tables, and an in-memory twin that passes the same contract suite
(tests/test_contract_<name>.py), so services are tested without an emulator. Optimistic-locking and
conditional-check races surface as `chalicelib.errors.Conflict` (HTTP 409), never as pynamodb exceptions."""
