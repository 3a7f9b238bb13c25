import numpy as np
import pytest

from aray.store._serialize import deserialize, serialize
from aray.store.shm import ShmDirectory


def test_round_trip_of_plain_values():
    for value in (1, "x", [1, {"a": (2, 3)}], None, b"bytes" * 1000):
        assert deserialize(serialize(value).to_bytes()) == value


def test_numpy_buffers_are_out_of_band_and_aligned():
    arr = np.arange(100_000, dtype=np.float64)
    ser = serialize({"a": arr, "b": arr[::2].copy()})
    assert len(ser.buffers) == 2
    assert all(off % 64 == 0 for off in ser.offsets)
    back = deserialize(ser.to_bytes())
    np.testing.assert_array_equal(back["a"], arr)


def test_store_reads_are_zero_copy_and_read_only(tmp_path):
    store = ShmDirectory(str(tmp_path / "store"))
    store.create()
    arr = np.random.rand(1_000_000)
    oid = b"\x01" * 16
    store.write(oid, serialize(arr))
    mapped = store.read(oid)
    back = deserialize(mapped)
    np.testing.assert_array_equal(back, arr)
    assert not back.flags.writeable
    assert not back.flags.owndata  # a view into the mapping, not a copy
    with pytest.raises(ValueError):
        back[0] = 1.0
    store.delete(oid)
    assert back.sum() == pytest.approx(arr.sum())  # still valid after the file is gone
    store.remove_all()
    assert not (tmp_path / "store").exists()


def test_non_contiguous_arrays_still_round_trip():
    arr = np.arange(100).reshape(10, 10).T
    np.testing.assert_array_equal(deserialize(serialize(arr).to_bytes()), arr)


def test_arrow_tables_are_zero_copy_from_the_store(tmp_path):
    import pyarrow as pa

    store = ShmDirectory(str(tmp_path / "store"))
    store.create()
    table = pa.table({"a": np.arange(500_000), "b": np.random.rand(500_000)})
    oid = b"\x02" * 16
    store.write(oid, serialize({"table": table, "batch": table.to_batches()[0]}))
    mapped = store.read(oid)
    start = np.frombuffer(mapped, dtype=np.uint8).ctypes.data
    back = deserialize(mapped)
    assert back["table"].equals(table) and back["batch"].num_rows == 500_000
    for column in back["table"].columns:  # every data buffer points into the mapping
        data = column.chunk(0).buffers()[1]
        assert start <= data.address < start + len(mapped)
    store.remove_all()
