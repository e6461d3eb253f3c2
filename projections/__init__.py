"""The read side of keyledger: projections folded from the ledger, and the queries on them."""
