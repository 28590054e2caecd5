"""Dataset builders for every puzzle family, all generated or read from local files."""
