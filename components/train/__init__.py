"""Train: the Keras trainer (``executor``), its callbacks and the tf.distribute strategy and cluster helpers."""
