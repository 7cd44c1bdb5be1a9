"""Recovery fine-tuning after pruning (mask-preserving). Not implemented yet: see the issues."""
