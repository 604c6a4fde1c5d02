"""Day 06 checker: load_safetensors. Run: pytest checkers/day_06

The oracle is the official `safetensors` library: files are written with save_file and your
loader must return exactly what load_file returns. Corrupt files are made by editing the bytes
of a valid file; each must raise a one-line ValueError that names the file (and the tensor).
Two rules go beyond "every tensor fits": the tensors must tile the data section exactly (no
hole, no stray bytes after the last one), and a name may appear only once in the header.
"""
import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32,
          torch.int16, torch.int8, torch.uint8, torch.bool]
SHAPES = [(), (0,), (1,), (7,), (3, 5), (2, 0, 3), (2, 3, 4), (1, 1, 1, 9)]


def random_tensor(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=g) * 3).to(dtype)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    info = torch.iinfo(dtype)
    return torch.randint(info.min, info.max, shape, generator=g, dtype=torch.int64).to(dtype)


def assert_same_tensors(got, want, what):
    assert isinstance(got, dict), f"{what}: load_safetensors must return a dict, got {type(got).__name__}"
    assert sorted(got) == sorted(want), f"{what}: names {sorted(got)}, expected {sorted(want)}" + (
        " (skip the '__metadata__' entry: it is not a tensor)" if "__metadata__" in got else "")
    for name, w in want.items():
        g = got[name]
        assert isinstance(g, torch.Tensor), f"{what}: {name!r} is a {type(g).__name__}, not a torch.Tensor"
        assert g.dtype == w.dtype, f"{what}: tensor {name!r} has dtype {g.dtype}, the file says {w.dtype}"
        assert tuple(g.shape) == tuple(w.shape), f"{what}: tensor {name!r} has shape {tuple(g.shape)}, " \
                                                 f"the file says {tuple(w.shape)}"
        assert g.device.type == "cpu", f"{what}: tensor {name!r} must be a CPU tensor"
        assert torch.equal(g, w), f"{what}: tensor {name!r} ({w.dtype}, {tuple(w.shape)}) has the wrong " \
                                  "values -- data_offsets count from the first byte after the header"


def split_file(path):
    """(header dict, data bytes) of a valid safetensors file."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write_file(path, header, data):
    """Write a header (dict, or raw bytes) and data the way safetensors lays them out."""
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)


# ---- valid files -----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=[str(d).removeprefix("torch.") for d in DTYPES])
def test_every_dtype_matches_the_official_loader(day, tmp_path, dtype):
    """One file per dtype with 0-d, empty, odd and multi-dim tensors."""
    tensors = {f"t{i}": random_tensor(s, dtype, seed=i) for i, s in enumerate(SHAPES)}
    path = tmp_path / "one_dtype.safetensors"
    save_file(tensors, str(path))
    assert_same_tensors(day.load_safetensors(path), load_file(str(path)), f"{dtype} file")


def mixed_file(tmp_path):
    g = torch.Generator().manual_seed(6)
    tensors = {}
    for i in range(30):
        dtype = DTYPES[i % len(DTYPES)]
        shape = tuple(int(d) for d in torch.randint(0, 6, (int(torch.randint(0, 4, (1,), generator=g)),),
                                                    generator=g))
        tensors[f"model.layers.{i}.weight"] = random_tensor(shape, dtype, seed=100 + i)
    path = tmp_path / "mixed.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt", "note": "__metadata__ is not a tensor"})
    return path


def test_mixed_dtypes_with_metadata(day, tmp_path):
    """All dtypes in one file (different element sizes), plus a __metadata__ entry; str or Path."""
    path = mixed_file(tmp_path)
    want = load_file(str(path))
    assert_same_tensors(day.load_safetensors(path), want, "mixed file (Path)")
    assert_same_tensors(day.load_safetensors(str(path)), want, "mixed file (str path)")


def test_tensors_are_views_of_the_file_not_copies(day, tmp_path):
    """mmap the file once and view into it: tensor addresses sit at the file's own offsets."""
    path = mixed_file(tmp_path)
    header, _ = split_file(path)
    start = 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]
    got = day.load_safetensors(path)
    bases = {}
    for name, info in header.items():
        begin, end = info.get("data_offsets", (0, 0)) if name != "__metadata__" else (0, 0)
        if end > begin:
            bases[name] = got[name].data_ptr() - (start + begin)
    assert len(bases) > 10
    first = next(iter(bases.values()))
    moved = [n for n, b in bases.items() if b != first]
    assert not moved, (f"tensors {moved[:3]} do not sit at their file offsets in one buffer: map the file "
                       "once (mmap) and view every tensor into it instead of reading or copying each one")


def test_file_without_tensors(day, tmp_path):
    path = tmp_path / "empty.safetensors"
    save_file({}, str(path), metadata={"format": "pt"})
    assert day.load_safetensors(path) == {}, "a file with no tensors loads as an empty dict"


def test_real_checkpoint_if_present(day, tiny_model):
    """The tiny model's weights file (what day 07 will load)."""
    path = tiny_model / "model.safetensors"
    assert_same_tensors(day.load_safetensors(path), load_file(str(path)), path.name)


# ---- corrupt files ---------------------------------------------------------------------------
def valid_file(tmp_path):
    tensors = {"alpha": random_tensor((4,), torch.float32, 1), "beta": random_tensor((4,), torch.float32, 2),
               "gamma": random_tensor((3, 2), torch.float16, 3), "delta": random_tensor((2,), torch.int64, 4)}
    path = tmp_path / "good.safetensors"
    save_file(tensors, str(path))
    return path


def edit_header(change):
    """A corruption that edits one field of the JSON header and rewrites the file."""
    def corrupt(path):
        header, data = split_file(path)
        change(header, len(data))
        write_file(path, header, data)
    return corrupt


def set_field(name, field, value):
    return edit_header(lambda h, n: h[name].__setitem__(field, value(h, n) if callable(value) else value))


def raw_edit(change):
    def corrupt(path):
        path.write_bytes(change(path.read_bytes()))
    return corrupt


def header_len(raw):
    return struct.unpack("<Q", raw[:8])[0]


def deeply_nested(path):
    """A header nested 100,000 levels deep: json.loads recurses once per level."""
    _, data = split_file(path)
    write_file(path, b'{"alpha": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", data)


def duplicate_name(path):
    """'alpha' twice: JSON parsers disagree on which one counts (Python's keeps the last, others
    the first), so one file would be two different models."""
    header, data = split_file(path)
    text = json.dumps(header)[:-1] + ', "alpha": ' + json.dumps({**header["alpha"], "shape": [2, 2]}) + "}"
    write_file(path, text.encode(), data)


def hole_after_first_tensor(path):
    """8 bytes that no tensor owns, after the first tensor (every later offset moved along)."""
    header, data = split_file(path)
    first = min((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])
    end = header[first]["data_offsets"][1]
    for name, info in header.items():
        if name not in ("__metadata__", first):
            info["data_offsets"] = [o + 8 for o in info["data_offsets"]]
    write_file(path, header, data[:end] + bytes(8) + data[end:])


def overlap_without_a_hole(path):
    """The last tensor moved back onto the one before it and the file cut to match: the tensors
    still reach exactly to the end, with no hole, so only the overlap itself gives it away."""
    header, data = split_file(path)
    order = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])
    (begin, end), prev_end = header[order[-1]]["data_offsets"], header[order[-2]]["data_offsets"][1]
    header[order[-1]]["data_offsets"] = [prev_end - (end - begin), prev_end]
    write_file(path, header, data[:prev_end])


# (id, corruption, tensor names of which the message must contain one; () = only the file name)
CORRUPTIONS = [
    ("empty_file", raw_edit(lambda r: b""), ()),
    ("shorter_than_8_bytes", raw_edit(lambda r: r[:5]), ()),
    ("truncated_in_header", raw_edit(lambda r: r[:8 + header_len(r) // 2]), ()),
    ("truncated_in_data", raw_edit(lambda r: r[:-6]), ()),
    ("header_length_past_end", raw_edit(lambda r: struct.pack("<Q", len(r)) + r[8:]), ()),
    ("header_length_2**64-1", raw_edit(lambda r: b"\xff" * 8 + r[8:]), ()),
    ("header_not_json", raw_edit(lambda r: r[:8] + b"#" * header_len(r) + r[8 + header_len(r):]), ()),
    ("header_not_utf8", raw_edit(lambda r: r[:8] + b"\xff\xfe" * (header_len(r) // 2) + r[8 + header_len(r):]), ()),
    ("header_not_an_object", raw_edit(
        lambda r: r[:8] + b"[1, 2]".ljust(header_len(r)) + r[8 + header_len(r):]), ()),
    ("offsets_out_of_range", set_field("beta", "data_offsets", lambda h, n: [n - 8, n + 8]), ("beta",)),
    ("offsets_reversed", set_field("gamma", "data_offsets",
                                   lambda h, n: h["gamma"]["data_offsets"][::-1]), ("gamma",)),
    ("offsets_overlap", set_field("beta", "data_offsets",
                                  lambda h, n: [h["alpha"]["data_offsets"][0] + 8,
                                                h["alpha"]["data_offsets"][0] + 24]), ("alpha", "beta")),
    ("offsets_not_integers", set_field("delta", "data_offsets",
                                       lambda h, n: [str(o) for o in h["delta"]["data_offsets"]]), ("delta",)),
    ("offsets_one_number", set_field("delta", "data_offsets", lambda h, n: [0]), ("delta",)),
    ("shape_does_not_match_size", set_field("gamma", "shape", [3, 3]), ("gamma",)),
    ("dtype_does_not_match_size", set_field("alpha", "dtype", "F64"), ("alpha",)),
    ("negative_dims_same_product", set_field("alpha", "shape", [-2, -2]), ("alpha",)),
    ("shape_not_integers", set_field("alpha", "shape", [4.0]), ("alpha",)),
    ("unknown_dtype", set_field("delta", "dtype", "Q4_K"), ("delta",)),
    ("missing_shape", edit_header(lambda h, n: h["gamma"].pop("shape")), ("gamma",)),
    ("entry_not_an_object", edit_header(lambda h, n: h.__setitem__("beta", [1, 2, 3])), ("beta",)),
    ("header_nested_100k_deep", deeply_nested, ()),
    ("duplicate_tensor_name", duplicate_name, ("alpha",)),
    ("metadata_not_strings", edit_header(lambda h, n: h.__setitem__("__metadata__", {"format": 1})), ()),
    ("metadata_not_an_object", edit_header(lambda h, n: h.__setitem__("__metadata__", ["pt"])), ()),
    ("bytes_after_the_last_tensor", raw_edit(lambda r: r + bytes(16)), ()),
    ("hole_between_tensors", hole_after_first_tensor, ()),
    ("overlap_without_a_hole", overlap_without_a_hole, ("alpha", "beta", "gamma", "delta")),
]


@pytest.mark.parametrize("corrupt,names", [c[1:] for c in CORRUPTIONS], ids=[c[0] for c in CORRUPTIONS])
def test_corrupt_file_raises_value_error(day, tmp_path, corrupt, names):
    path = valid_file(tmp_path)
    corrupt(path)
    try:
        got = day.load_safetensors(path)
    except NotImplementedError:
        raise
    except ValueError as e:
        msg = str(e)
        assert path.name in msg, f"the ValueError must name the file ({path.name}); got: {msg!r}"
        assert "\n" not in msg.strip(), f"make the ValueError one line; got: {msg!r}"
        if names:
            assert any(f in msg for f in names), f"the ValueError must name the tensor ({' or '.join(names)}); got: {msg!r}"
        return
    except Exception as e:  # noqa: BLE001 -- anything else is a crash the learner should turn into a ValueError
        pytest.fail(f"a corrupt file raised {type(e).__name__}: {e} -- check it and raise a one-line ValueError naming the file")
    pytest.fail(f"a corrupt file loaded without error (got {sorted(got)}): check the header against the file "
                "before making tensors")


@pytest.mark.parametrize("name,shape", [("alpha", [2]), ("gamma", [2, 2]), ("delta", [])],
                         ids=["half_the_span", "4_of_6_elements", "0d_in_a_2_element_span"])
def test_span_larger_than_the_shape_needs_is_refused(day, tmp_path, name, shape):
    """data_offsets spanning MORE bytes than shape x dtype needs: a reader that only checks the
    span is big enough would load it and silently skip bytes. end - begin must equal the size."""
    path = valid_file(tmp_path)
    set_field(name, "shape", shape)(path)
    with pytest.raises(ValueError, match=name):
        day.load_safetensors(path)
