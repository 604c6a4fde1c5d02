"""Day 09 checker: embedding (gather). Run: pytest checkers/day_09"""
import pytest
import torch

from shared.reference import embedding as reference_embedding
from shared.course.testing import assert_close, randn

DTYPES = [torch.float32, torch.float16]


def _ids(T, vocab, dtype=torch.int32, device="cpu", seed=0):
    """Random ids that always include the first and the last row of the table."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (T,), generator=g)
    ids[0], ids[-1] = vocab - 1, 0
    return ids.to(dtype=dtype, device=device)


@pytest.mark.parametrize("id_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference(day, sizes, device, dtype, id_dtype):
    """A gather copies bits: the result must equal the reference exactly (repeated ids too)."""
    vocab, hidden, T = sizes(tiny=(23, 70, 5), real=(49152, 576, 4099))
    table = randn(vocab, hidden, dtype=dtype, device=device, seed=1)
    ids = _ids(T, vocab, id_dtype, device)
    ids[2] = ids[1]
    out = day.embedding(ids, table)
    assert out.dtype == dtype, f"embedding must return the table's dtype {dtype}, got {out.dtype}"
    assert_close(out, reference_embedding(ids, table), f"embedding {dtype} ids {id_dtype}", atol=0, rtol=0)


@pytest.mark.parametrize("block_size", [32, 64])
def test_hidden_not_a_multiple_of_the_block(day, sizes, device, block_size):
    """hidden=70 is 2.2 blocks of 32: the last chunk must be guarded and still written."""
    vocab, hidden, T = sizes(tiny=(11, 70, 3), real=(1000, 1000, 513))
    table = randn(vocab, hidden, device=device, seed=2)
    ids = _ids(T, vocab, device=device, seed=3)
    out = day.embedding(ids, table, block_size=block_size)
    assert_close(out, reference_embedding(ids, table), f"embedding block_size={block_size}", atol=0, rtol=0)


def test_strided_ids(day, device):
    """ids that are a view (every other element) must be read through their stride."""
    table = randn(9, 40, device=device, seed=4)
    ids = _ids(8, 9, device=device, seed=5)[::2]
    assert_close(day.embedding(ids, table, block_size=32), table[ids.long()], "embedding of ids[::2]",
                 atol=0, rtol=0)


def test_matches_hf_embedding_of_the_tiny_model(day, device, tiny_model):
    """The tiny Llama's own embed_tokens (a torch nn.Embedding inside HF's model)."""
    from transformers import LlamaForCausalLM
    hf = LlamaForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    ids = torch.tensor(list(b"Hi!"), dtype=torch.int32)
    with torch.no_grad():
        expected = hf.model.embed_tokens(ids.long())
    table = hf.model.embed_tokens.weight.detach().to(device)
    assert_close(day.embedding(ids.to(device), table, block_size=32), expected,
                 "embedding vs HF embed_tokens", atol=0, rtol=0)


@pytest.mark.parametrize("bad", [-1, 23, 1000, -7])
def test_out_of_range_ids_give_zero_rows_and_never_read_outside(day, device, bad):
    """The table is a view into a bigger buffer whose rows just before and after it are NOT zero:
    a kernel that follows id -1 or id vocab would copy them. Out-of-range ids must give zero
    rows (the output is poisoned first, so the zeros must be written), the others their rows."""
    big = randn(25, 16, device=device, seed=9)
    table = big[1:24]                                          # rows -1 and 23 of `table` exist in memory
    ids = torch.tensor([0, 5, bad, 22], dtype=torch.int32, device=device)
    out = day.embedding(ids, table)
    want = table[torch.tensor([0, 5, 0, 22], device=device).long()].clone()
    want[2] = 0
    assert_close(out, want, f"embedding with id {bad} (vocab 23): that row must be zeros, the others "
                            "their table rows -- guard the table's bounds in the kernel", atol=0, rtol=0)


def test_no_host_reads(day, device):
    """The embedding runs inside the captured decode step (day 23): it must not read the ids back
    to the host (.item(), int(ids.min()), .tolist(), .cpu() all wait for the GPU)."""
    from shared.course.testing import no_host_reads
    table = randn(23, 16, device=device)
    ids = torch.tensor([3, 1, 22], dtype=torch.int32, device=device)
    with no_host_reads():
        out = day.embedding(ids, table)
    assert_close(out, table[ids.long()], "embedding", atol=0, rtol=0)


def test_empty_ids(day, device):
    out = day.embedding(torch.empty(0, dtype=torch.int32, device=device), randn(7, 12, device=device))
    assert tuple(out.shape) == (0, 12), f"embedding of no ids: shape {tuple(out.shape)}, expected (0, 12)"


def test_returns_new_tensor_and_leaves_table_alone(day, device):
    table = randn(10, 33, device=device, seed=6)
    before = table.clone()
    ids = torch.tensor([4], dtype=torch.int32, device=device)
    out = day.embedding(ids, table, block_size=32)
    assert out.data_ptr() != table.data_ptr(), "embedding must return a new tensor, not a view of the table"
    assert torch.equal(table, before), "embedding must not modify the table"
    assert out.device == table.device, "output must be on the table's device"


@pytest.mark.parametrize("case", ["2-D ids", "float ids", "1-D table"])
def test_bad_inputs_raise_value_error(day, device, case):
    table = randn(10, 8, device=device)
    ids = torch.tensor([1, 2], dtype=torch.int32, device=device)
    if case == "2-D ids":
        ids = ids[None]
    elif case == "float ids":
        ids = ids.float()
    else:
        table = table[0]
    with pytest.raises(ValueError):
        day.embedding(ids, table)


@pytest.mark.gpu
def test_smollm2_sized_prefill(day, device):
    """A 4096-token prefill from a SmolLM2-sized fp16 table (49152 x 576)."""
    table = randn(49152, 576, dtype=torch.float16, device=device, seed=7)
    ids = _ids(4096, 49152, device=device, seed=8)
    assert_close(day.embedding(ids, table), table[ids.long()], "embedding 4096 x 576 fp16", atol=0, rtol=0)


@pytest.mark.gpu
def test_no_sync_on_the_gpu(day, device):
    """Under torch's sync-debug mode a host sync raises: a decode-sized lookup must make none."""
    table = randn(1000, 64, dtype=torch.float16, device=device, seed=10)
    ids = torch.tensor([7], dtype=torch.int32, device=device)
    day.embedding(ids, table)                      # compile outside the checked region
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = day.embedding(ids, table)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert_close(out, table[ids.long()], "embedding", atol=0, rtol=0)
