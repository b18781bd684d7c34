"""Turn files into chunks and sync them into a knowledge base: loaders → splitter → pipeline."""
