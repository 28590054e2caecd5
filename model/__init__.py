"""Tiny Recursive Models: config, layers, the recursive network, checkpoints and puzzle codecs."""
