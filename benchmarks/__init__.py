"""nvrxlog benchmarks: each module answers one question and prints a table of ratios."""
