"""Push: a blessed model published atomically as a new version under the serving base (``executor``)."""
