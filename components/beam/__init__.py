"""Beam plumbing shared by the Beam steps: the runner and its options, line reading, the TFRecord sink."""
