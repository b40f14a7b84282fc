"""DAPO overlong handling (rlwhf.algo.length) and pass@k (rlwhf.algo.metrics), checked by hand."""

import pytest
import torch

from rlwhf.algo import mask_truncated, overlong_penalty, pass_at_k


def test_overlong_penalty_is_zero_then_linear_to_minus_one_then_minus_one():
    # max 20, cache 4: free up to 16, then (16 - len) / 4, -1 past 20
    lengths = torch.tensor([10, 16, 17, 18, 20, 25])
    assert overlong_penalty(lengths, 20, 4).tolist() == [0.0, 0.0, -0.25, -0.5, -1.0, -1.0]


def test_overlong_penalty_refuses_a_bad_cache_length():
    with pytest.raises(ValueError, match="cache_length 0 with max_length 20: expected 0 < cache_length <= max_length"):
        overlong_penalty(torch.tensor([1]), 20, 0)
    with pytest.raises(ValueError, match="cache_length 30 with max_length 20"):
        overlong_penalty(torch.tensor([1]), 20, 30)


def test_mask_truncated_zeroes_the_rows_of_truncated_samples_only():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    out = mask_truncated(mask, torch.tensor([False, True]))
    assert out.tolist() == [[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
    assert out.dtype == mask.dtype and mask[1].sum() == 3  # the input is not modified
    with pytest.raises(ValueError, match=r"truncated \(3,\): expected one flag per row of mask \(2, 3\)"):
        mask_truncated(mask, torch.tensor([False, True, False]))


def test_pass_at_k_by_hand():
    assert pass_at_k(7, 3, 1) == pytest.approx(3 / 7)  # k = 1 is the fraction correct
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert pass_at_k(20, 3, 5) == pytest.approx(1 - 6188 / 15504)  # 1 - C(17,5)/C(20,5)
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(4, 3, 2) == 1.0  # only one wrong sample: any 2 hit


def test_pass_at_k_refuses_impossible_counts():
    with pytest.raises(ValueError, match=r"pass_at_k\(n=4, c=5, k=1\): expected 0 <= c <= n and 1 <= k <= n"):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError, match=r"pass_at_k\(n=4, c=1, k=5\)"):
        pass_at_k(4, 1, 5)
