"""`sagrflow demo`: one command from nothing to a trained policy acting in the sim, with a report."""
