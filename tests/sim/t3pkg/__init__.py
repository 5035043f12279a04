"""The simulated t3 package's payload: t3sim.py and t3serve.py (lib/), bin_t3 (bin/t3)."""
