"""The ingestion line reader: byte ranges that own every line once, CSV headers, gzip, and a bound on line length."""
import gzip
import io
import time

import numpy as np
import pytest

from components.beam.line_reader import LineBatch, LongLine, ReadLineBatches, iter_lines, line_ranges


def read_all(pattern: str, max_line_bytes: int, range_bytes: int, skip_header: bool = False, starts=None):
    lines, long = [], []
    for line_range in line_ranges(pattern, range_bytes):
        for out in ReadLineBatches(max_line_bytes, batch_size=7, skip_header=skip_header).process(line_range):
            if isinstance(out, LineBatch):
                assert out.path == line_range.path and len(out.starts) == len(out.lines)
                lines += out.lines
                if starts is not None:
                    starts += out.starts
            else:
                assert out.tag == "too_long"
                long.append(out.value)
    return lines, long


@pytest.fixture
def text_file(tmp_path):
    rng = np.random.default_rng(0)
    lines = [rng.choice(list(b"ab,\r"), rng.integers(0, 40)).astype(np.uint8).tobytes().rstrip(b"\r")
             for _ in range(500)]
    lines[17] = b"y" * 300
    lines[401] = b""
    path = tmp_path / "log.csv"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, lines


@pytest.mark.parametrize("range_bytes", [1, 7, 64, 1000, 1 << 20])
def test_ranges_read_every_line_exactly_once(text_file, range_bytes):
    path, lines = text_file
    starts = []
    read, long = read_all(str(path), 100, range_bytes, starts=starts)
    assert read == [line for line in lines if len(line) <= 100]
    offsets = np.cumsum([0] + [len(line) + 1 for line in lines[:-1]])
    assert starts == [int(o) for o, line in zip(offsets, lines) if len(line) <= 100]
    assert long == [LongLine(str(path), sum(len(line) + 1 for line in lines[:17]), 300, b"y" * 200)]


def test_header_skip_crlf_and_a_last_line_without_newline(tmp_path):
    (tmp_path / "a.csv").write_bytes(b"h1,h2\r\n1,2\r\n3,4")
    (tmp_path / "b.csv").write_bytes(b"h1,h2\n5,6\n")
    lines, _ = read_all(str(tmp_path / "*.csv"), 100, 4, skip_header=True)
    assert lines == [b"1,2", b"3,4", b"5,6"]


@pytest.mark.parametrize("range_bytes", [1, 2, 3, 4, 5, 1 << 20])
def test_a_utf8_byte_order_mark_is_not_part_of_the_first_line(tmp_path, range_bytes):
    (tmp_path / "a.csv").write_bytes(b"\xef\xbb\xbfh1,h2\n1,2\n")
    assert read_all(str(tmp_path / "a.csv"), 100, range_bytes)[0] == [b"h1,h2", b"1,2"]
    assert read_all(str(tmp_path / "a.csv"), 100, range_bytes, skip_header=True)[0] == [b"1,2"]
    assert next(iter_lines(io.BytesIO(b"\xef\xbb\xbfh1\n"), 0, 100))[:2] == (3, b"h1")


def test_gzip_files_are_read_whole(tmp_path):
    path = tmp_path / "log.csv.gz"
    path.write_bytes(gzip.compress(b"a\n" + b"z" * 5000 + b"\nb\n"))
    assert [r.end for r in line_ranges(str(path), 16)] == [None]
    lines, long = read_all(str(path), 100, 16)
    assert lines == [b"a", b"b"] and [(x.offset, x.size) for x in long] == [(2, 5000)]


def test_a_long_line_costs_linear_time_and_bounded_memory():
    # Beam's ReadFromText grows its buffer by concatenation: 31 s for one 16 MB line.
    data = b"x" * (64 << 20) + b"\nnext\n"
    started = time.perf_counter()
    out = list(iter_lines(io.BytesIO(data), 0, 1 << 20))
    assert time.perf_counter() - started < 10
    assert [(start, line, size) for start, line, size, _ in out] == [(0, None, 64 << 20), ((64 << 20) + 1, b"next", 4)]
