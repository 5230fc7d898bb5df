"""Language over hand motion: hierarchical text annotation and the instruction data built from it."""
