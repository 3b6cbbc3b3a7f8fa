"""``beco-local``: a whole BECO network as real processes on this machine."""
