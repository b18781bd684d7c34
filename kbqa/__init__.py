"""kbqa: local knowledge-base question answering. Importing this package imports nothing."""
