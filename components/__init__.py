"""One module per pipeline step; each step is a plain function, wrapped thinly for kfp.

A process that ran tf.Transform on Beam segfaults at interpreter exit (exit 139) while
the garbage collector tears TensorFlow objects down. Every process that runs a step
imports this package (CLI, kfp.local tasks, pytest), so freezing the collector at exit
is handled here, once: the objects are left to the OS, and the process exits 0.
"""
import atexit
import gc

atexit.register(gc.freeze)
