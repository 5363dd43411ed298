"""Analysis of stored results: the results frame, statistics, the claims ledger, variant agreement, run comparison."""
