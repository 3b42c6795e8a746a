"""Memory banks: greedy k-center coreset selection, exact k-NN search, bank construction."""
