"""Protocol Buffers IDL and the generated modules (committed; ``make proto`` regenerates)."""
