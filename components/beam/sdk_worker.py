"""The DirectRunner's SDK worker process (``multi_processing``): Beam's own worker main, with the
garbage collector frozen at interpreter exit.

The runner waits for every worker to exit before a pipeline returns, and a worker that loaded
TensorFlow spent 1–3 s tearing its objects down at exit (2.7 s of an 18.9 s transform of 2,000
rows). As in the main process (``components.beam.runner``), the objects are left to the OS.
``components.beam.runner`` starts this module in place of ``apache_beam.runners.worker.sdk_worker_main``.
"""
import atexit
import gc
import sys

from apache_beam.runners.worker import sdk_worker_main

if __name__ == "__main__":
    atexit.register(gc.freeze)
    sdk_worker_main.main(sys.argv)
