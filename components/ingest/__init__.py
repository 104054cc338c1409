"""Ingest: raw impression logs (Ali-CCP raw or CSV) to tf.Example TFRecords split by time, with the schema, counts
and rejected rows (``executor``); the readers, row parsing and batch encoding it uses."""
