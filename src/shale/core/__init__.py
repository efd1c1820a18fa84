"""The core: database handle, transactions, selectors, retries."""
