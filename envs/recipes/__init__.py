"""Dataset recipes: the code that runs behaviour policies in the adapters to build datasets."""
