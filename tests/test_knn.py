"""Chunked exact k-NN and in-bank neighbours against brute force."""

import numpy as np
import torch

from exdd_core.banks import Bank


def brute(q, b, k):
    d = np.linalg.norm(q[:, None, :].astype(np.float64) - b[None].astype(np.float64), axis=2)
    idx = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, idx, 1), idx


def test_knn_matches_brute_force_with_tiny_chunks():
    rng = np.random.default_rng(0)
    b = rng.standard_normal((257, 16)).astype(np.float32)
    q = rng.standard_normal((70, 16)).astype(np.float32)
    bank = Bank(b)
    for k in (1, 3, 10):
        d, i = bank.knn(q, k, bank_chunk=50, query_chunk=17)
        rd, ri = brute(q, b, k)
        np.testing.assert_allclose(d.numpy(), rd, rtol=1e-4, atol=1e-4)
        assert np.array_equal(i.numpy(), ri)


def test_knn_of_bank_members_is_zero_distance():
    b = np.random.default_rng(1).standard_normal((40, 8)).astype(np.float32) * 10
    d, i = Bank(b).knn(b, 1)
    assert np.array_equal(i[:, 0].numpy(), np.arange(40))
    assert float(d.max()) == 0.0  # winners' distances are recomputed exactly


def test_neighbours_of_members_excludes_self_even_with_duplicates():
    rng = np.random.default_rng(2)
    b = rng.standard_normal((30, 5)).astype(np.float32)
    b[7] = b[3]  # duplicate at distance 0
    bank = Bank(b)
    nn = bank.neighbours_of_members(torch.tensor([3, 7, 10]), 3).numpy()
    assert nn.shape == (3, 3)
    assert 3 not in nn[0] and 7 in nn[0]
    assert 7 not in nn[1] and 3 in nn[1]
    _, ref = brute(b[[10]], np.delete(b, 10, axis=0), 3)
    assert sorted(nn[2].tolist()) == sorted([j if j < 10 else j + 1 for j in ref[0]])


def test_tensor_queries_never_go_through_numpy():
    # CUDA tensors cannot become numpy arrays; a tensor that requires grad cannot either, so it stands in for
    # one here: the model's evidence passes device tensors to knn, and the neighbour table passes the bank's own rows
    rng = np.random.default_rng(3)
    b = rng.standard_normal((50, 6)).astype(np.float32)
    q = torch.tensor(rng.standard_normal((7, 6)), dtype=torch.float64, requires_grad=True)
    bank = Bank(torch.tensor(b, requires_grad=True))
    d, i = bank.knn(q, 2)
    rd, ri = brute(q.detach().numpy().astype(np.float32), b, 2)
    np.testing.assert_allclose(d.numpy(), rd, rtol=1e-4, atol=1e-4)
    assert np.array_equal(i.numpy(), ri)
    assert bank.neighbours_of_members(torch.tensor([0, 4]), 2).shape == (2, 2)


def test_nearest_rows_are_exact_when_features_share_a_large_mean():
    """Rows and queries around a large common mean (as ReLU features are): the fast |b|^2 - 2 q.b ranking
    alone swapped near neighbours (355 of 2,000 queries wrong, measured); centring and the exact re-rank of
    the candidates give the float64 brute force's nearest row for every query, distances to float32."""
    rng = np.random.default_rng(4)
    mu = rng.uniform(0, 20, 256).astype(np.float32)
    b = (mu + 0.05 * rng.standard_normal((400, 256))).astype(np.float32)
    q = (mu + 0.05 * rng.standard_normal((2000, 256))).astype(np.float32)
    for chunks in ({}, {"bank_chunk": 64, "query_chunk": 300}):
        d, i = Bank(b).knn(q, 2, **chunks)
        rd, ri = brute(q, b, 2)
        assert np.array_equal(i.numpy(), ri)
        np.testing.assert_allclose(d.numpy(), rd, rtol=1e-5, atol=1e-6)


def test_nearest_row_alone_matches_the_full_rerank_on_near_ties():
    """k = 1 searches exactly only the queries whose two best GEMM values are within its rounding bound: on rows
    around a large mean, with exact duplicates (ties go to the lower index) and near-duplicates, it returns
    what re-ranking every candidate returns (k = 2's first column) and the float64 brute force's row."""
    rng = np.random.default_rng(5)
    mu = rng.uniform(0, 20, 64).astype(np.float32)
    b = (mu + 0.05 * rng.standard_normal((300, 64))).astype(np.float32)
    b[10] = b[3]  # an exact tie: row 3 wins
    b[20] = b[4] + np.float32(1e-6)  # a near tie
    q = np.concatenate([b[[3, 10, 4, 20]], (mu + 0.05 * rng.standard_normal((1000, 64))).astype(np.float32)])
    bank = Bank(b)
    d2, i2 = bank.knn(q, 2)
    _, ri = brute(q[4:], b, 1)
    for chunks in ({}, {"bank_chunk": 7, "query_chunk": 300}):  # ties across bank chunks too
        d1, i1 = bank.knn(q, 1, **chunks)
        assert torch.equal(i1[:, 0], i2[:, 0]) and torch.equal(d1[:, 0], d2[:, 0])
        assert i1[0, 0] == 3 and i1[1, 0] == 3 and float(d1[0, 0]) == 0.0
        assert np.array_equal(i1[4:].numpy(), ri)
