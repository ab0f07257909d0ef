"""Nothing lost, nothing mixed: checksummed result files, run-folder checks and lock, weights protection, bad input."""

import h5py
import pytest
import torch

import bayestrex as bt


def small_result(seed: int = 3) -> bt.Result:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(4, 500, 3, generator=g)
    probs = torch.softmax(torch.randn(4, 500, 2, generator=g), -1)
    return bt.Result(z=z, probs=probs, u=probs[..., 1:], stats={"diverging": torch.zeros(4, 500, dtype=torch.bool)},
                     target="high:1", sigma=0.2, info={"seed": seed, "models_sha256": {"vae": "ab" * 32}})


def largest_block(path) -> tuple[int, int]:
    """``(byte offset, size)`` of the largest stored chunk in an HDF5 file."""
    blocks = []

    def visit(_, obj):
        if isinstance(obj, h5py.Dataset) and obj.chunks is not None:
            for i in range(obj.id.get_num_chunks()):
                info = obj.id.get_chunk_info(i)
                blocks.append((info.size, info.byte_offset))

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    size, offset = max(blocks)
    return offset, size


def test_saved_result_round_trips_with_provenance(tmp_path):
    res = small_result()
    path = tmp_path / "r.nc"
    res.save(path)
    back = bt.load(path)
    assert torch.equal(back.z, res.z) and torch.equal(back.probs, res.probs)
    with h5py.File(path, "r") as f:
        assert f["posterior/z"].fletcher32 and f["sample_stats/diverging"].fletcher32
        assert f.attrs["bayestrex_version"] == bt.__version__ and f.attrs["bayestrex_seed"] == "3"
        assert "ab" * 32 in f.attrs["bayestrex_models_sha256"]
    assert "bayestrex_version" not in res.to_datatree().attrs  # the result's own tree is left as it was


def test_flipped_bit_in_a_data_block_is_detected(tmp_path):
    path = tmp_path / "r.nc"
    small_result().save(path)
    offset, size = largest_block(path)
    assert size > 10_000  # a block of z's floats (plus its 4-byte checksum), not metadata
    data = bytearray(path.read_bytes())
    data[offset + size // 2] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="r.nc is corrupt: a data block fails its checksum"):
        bt.load(path)
