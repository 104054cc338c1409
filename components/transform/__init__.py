"""Transform: tf.Transform over the ingested examples; the transform graph and transformed TFRecords (``executor``)."""
