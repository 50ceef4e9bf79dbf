"""Metering: what a call costs (prices), how much it may cost before it goes (the estimate),
what it did cost (usage read from the answer) and who spent it (the ledger)."""
