"""Command-line experiments: aspirin (SchNet), Ac-Ala3-NHMe (NequIP), water (GemNet-T)."""
