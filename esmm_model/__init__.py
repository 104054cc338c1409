"""The ESMM model family and its feature config. Knows nothing of Beam or kfp."""
