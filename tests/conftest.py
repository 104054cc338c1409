"""Test order for `make test`'s two processes (pytest-xdist, a file per process at a time): files with more
end-to-end (`slow`) tests start first, so that the long files do not begin last and leave one process
finishing alone. Within a file the order is unchanged."""
from collections import Counter


def pytest_collection_modifyitems(items):
    slow = Counter(item.path for item in items if item.get_closest_marker("slow"))
    first_seen = {path: i for i, path in reversed(list(enumerate(item.path for item in items)))}
    items.sort(key=lambda item: (-slow[item.path], first_seen[item.path]))
