"""tests/jobs/ holds projects that tests/test_jobs_e2e.py copies into a workspace.

Their own test suites run there, bare and supervised; the main suite does not
collect them.
"""

collect_ignore_glob = ["*/*"]
