"""Data files shipped with nnscratch (see README.md here); loaded by `nnscratch.datasets`."""
