"""Training batches: every example once per pass, and with length bucketing batches of similar length."""
from __future__ import annotations

import torch

from mpdistil.data.encode import batch_indices


def _padded_tokens(batches: list[list[int]], lengths: list[int]) -> int:
    return sum(max(lengths[i] for i in b) * len(b) for b in batches)


def test_bucketed_batches_cover_every_example_once_and_pad_less():
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(8, 128, (250,), generator=gen).tolist()
    plain = batch_indices(250, 8, True, torch.Generator().manual_seed(1))
    bucketed = batch_indices(250, 8, True, torch.Generator().manual_seed(1), lengths, bucket=8)
    for batches in (plain, bucketed):
        assert sorted(i for b in batches for i in b) == list(range(250))
        assert len(batches) == 32 and all(len(b) <= 8 for b in batches)
    assert _padded_tokens(bucketed, lengths) < 0.8 * _padded_tokens(plain, lengths)


def test_bucketing_is_seeded_and_still_shuffles():
    lengths = list(range(100))
    a = batch_indices(100, 4, True, torch.Generator().manual_seed(3), lengths, bucket=5)
    b = batch_indices(100, 4, True, torch.Generator().manual_seed(3), lengths, bucket=5)
    c = batch_indices(100, 4, True, torch.Generator().manual_seed(4), lengths, bucket=5)
    assert a == b and a != c
    assert a != sorted(a)  # the batch order is shuffled, not sorted by length
    assert batch_indices(100, 4, True, torch.Generator().manual_seed(3), lengths, bucket=1) != a


def test_inference_batches_bound_padding_and_keep_every_example():
    lengths = [int(x) for x in torch.randint(10, 128, (300,), generator=torch.Generator().manual_seed(2))]
    fixed = batch_indices(300, 64, False, lengths=lengths)
    bounded = batch_indices(300, 64, False, lengths=lengths, max_padding=0.1)
    assert sorted(i for b in bounded for i in b) == list(range(300))
    assert all(len(b) <= 64 for b in bounded)
    for b in bounded:
        real = sum(lengths[i] for i in b)
        assert max(lengths[i] for i in b) * len(b) <= 1.1 * real
    assert _padded_tokens(bounded, lengths) <= 1.1 * sum(lengths) < _padded_tokens(fixed, lengths)
    same_length = batch_indices(10, 4, False, lengths=[7] * 10, max_padding=0.0)
    assert [len(b) for b in same_length] == [4, 4, 2]
