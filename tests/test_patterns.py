import pytest
import torch

from prunekit.errors import ConfigError
from prunekit.patterns import NM, Unstructured, check_sparsity, parse_pattern


@pytest.mark.parametrize("text", ["3:2", "0:4", "4:4", "2:0", "a:b", "2-4", "-1:4"])
def test_invalid_patterns_are_refused(text):
    with pytest.raises(ConfigError):
        parse_pattern(text)


def test_parse_valid():
    assert parse_pattern("2:4") == NM(2, 4)
    assert parse_pattern(" 4 : 8 ") == NM(4, 8)
    assert parse_pattern("unstructured") == Unstructured("row")
    assert parse_pattern("unstructured:layer") == Unstructured("layer")
    assert str(NM(2, 4)) == "2:4" and NM(1, 4).sparsity() == 0.75


@pytest.mark.parametrize("s", [-0.1, 1.0, 1.5, "x"])
def test_sparsity_out_of_range(s):
    with pytest.raises(ConfigError):
        check_sparsity(s)


def test_nm_select_keeps_largest_per_group():
    scores = torch.tensor([[4.0, 1.0, 3.0, 2.0, 0.1, 0.4, 0.3, 0.2]])
    keep = NM(2, 4).select(scores)
    assert keep.tolist() == [[True, False, True, False, False, True, True, False]]
    assert NM(2, 4).is_satisfied(scores * keep)
    assert not NM(2, 4).is_satisfied(scores)


def test_nm_needs_divisible_width():
    with pytest.raises(ConfigError):
        NM(2, 4).select(torch.ones(2, 6))


def test_unstructured_row_and_layer_exact_counts():
    g = torch.Generator().manual_seed(0)
    s = torch.rand(7, 13, generator=g)
    keep_row = Unstructured("row").select(s, 0.3)
    assert ((~keep_row).sum(1) == round(13 * 0.3)).all()
    keep_layer = Unstructured("layer").select(s, 0.3)
    assert (~keep_layer).sum() == round(7 * 13 * 0.3)
    # layer scope prunes exactly the globally smallest
    thr = s.flatten().sort().values[round(91 * 0.3) - 1]
    assert ((s <= thr) == ~keep_layer).all()


def test_ties_are_broken_by_position_lower_index_first():
    """Dequantized weights tie often; the mask must not depend on topk's unspecified tie order."""
    flat = torch.tensor([[1.0, 2.0, 1.0, 1.0, 3.0, 1.0]])
    keep = Unstructured("row").select(flat, 0.5)  # prune 3 of the four 1.0s: the first three
    assert keep.tolist() == [[False, True, False, False, True, True]]
    layer = Unstructured("layer").select(flat.reshape(2, 3), 0.5)
    assert layer.flatten().tolist() == keep.flatten().tolist()
    groups = torch.tensor([[5.0, 5.0, 5.0, 5.0, 1.0, 2.0, 2.0, 2.0]])
    assert NM(2, 4).select(groups).tolist() == [[False, False, True, True, False, False, True, True]]
    big = torch.randint(0, 4, (64, 256)).float()  # many ties, exact count still holds
    assert int((~Unstructured("layer").select(big, 0.37)).sum()) == round(64 * 256 * 0.37)
    assert ((~Unstructured("row").select(big, 0.37)).sum(1) == round(256 * 0.37)).all()
