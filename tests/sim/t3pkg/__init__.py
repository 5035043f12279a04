"""The simulated t3 package's payload: t3sim.py (lib/) and bin_t3 (bin/t3)."""
