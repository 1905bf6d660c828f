"""Metrics against plain reference implementations written here."""

import datetime
import itertools
import math
import multiprocessing
import socket
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from reprokit.metrics import HighEntropyOverlap, PassAtK, TokenEntropy
from reprokit.metrics.functional import (
    ACCURACY_BINS,
    accuracy_histogram,
    entropy_stats,
    high_entropy_overlap,
    pass_at_k,
    pass_at_k_per_problem,
    powers_of_two,
    quantiles,
    solved_set_overlap,
    token_entropy,
)

# ---------------------------------------------------------------- plain references


def brute_pass_at_k(n: int, c: int, k: int) -> float:
    """Share of all k-subsets of the n samples that contain at least one correct sample."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(samples, k))
    return sum(any(s) for s in subsets) / len(subsets)


def exact_pass_at_k(n: int, c: int, k: int) -> Fraction:
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


def naive_quantile(values: list[float], q: float) -> float:
    """Sort, then interpolate linearly between the two neighbours of position q * (N - 1)."""
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def naive_entropy(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Full softmax in float64, then -sum p log p (0 log 0 = 0)."""
    x = logits.double() / temperature
    p = torch.softmax(x, dim=-1)
    logp = torch.log_softmax(x, dim=-1)
    return -(torch.where(p > 0, p * logp, torch.zeros_like(p))).sum(-1)


def loop_overlap(a: list[float], b: list[float], rho: float) -> float:
    thr_a = naive_quantile(a, 1 - rho)
    thr_b = naive_quantile(b, 1 - rho)
    top_a = both = 0
    for x, y in zip(a, b):
        if x >= thr_a:
            top_a += 1
            if y >= thr_b:
                both += 1
    return both / top_a


# ---------------------------------------------------------------- pass@k (functional)


def test_pass_at_k_matches_all_subsets():
    for n in range(1, 8):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k), abs=1e-12), (n, c, k)
    # The vectorised form on every (n, c) with n >= k, per k.
    for k in range(1, 8):
        pairs = [(n, c) for n in range(k, 8) for c in range(n + 1)]
        n_t = torch.tensor([p[0] for p in pairs])
        c_t = torch.tensor([p[1] for p in pairs])
        got = pass_at_k_per_problem(n_t, c_t, [k])[:, 0]
        want = torch.tensor([brute_pass_at_k(n, c, k) for n, c in pairs], dtype=torch.float64)
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


@pytest.mark.parametrize("n", [1024, 2048])
def test_pass_at_k_exact_at_large_n(n):
    ks = [1, 2, 16, 128, 1024]
    cs = sorted(c for c in {0, 1, 2, 7, 100, 512, 1000, n - 1025, n - 1024, n - 1023, n - 129, n - 2, n} if c >= 0)
    for c in cs:
        for k in ks:
            want = exact_pass_at_k(n, c, k)
            got = pass_at_k(n, c, k)
            assert abs(Fraction(got) - want) < Fraction(1, 10**12), (n, c, k, got, float(want))
            if want > 0:  # small values keep their relative precision too
                assert abs(Fraction(got) - want) / want < Fraction(1, 10**10), (n, c, k)
    grid = pass_at_k_per_problem(torch.full((len(cs),), n), torch.tensor(cs), ks)  # [P, K]
    want = torch.tensor([[float(exact_pass_at_k(n, c, k)) for k in ks] for c in cs], dtype=torch.float64)
    torch.testing.assert_close(grid, want, atol=1e-12, rtol=0)


def test_pass_at_k_rejects_bad_counts():
    with pytest.raises(ValueError, match=r"k=5 exceeds n=4"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match=r"c=5 .*n=4"):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError, match=r"n=-1"):
        pass_at_k(-1, 0, 1)
    with pytest.raises(ValueError, match=r"c=-1"):
        pass_at_k(4, -1, 1)
    with pytest.raises(ValueError, match=r"k=0"):
        pass_at_k(4, 1, 0)
    with pytest.raises(TypeError, match="integer"):
        pass_at_k(4.5, 1, 1)
    with pytest.raises(ValueError, match=r"problem 1 has n=3, c=1: k=4 exceeds"):
        pass_at_k_per_problem(torch.tensor([8, 3, 2]), torch.tensor([1, 1, 0]), [1, 4])
    with pytest.raises(ValueError, match=r"problem 2 has n=2, c=3"):
        pass_at_k_per_problem(torch.tensor([8, 3, 2]), torch.tensor([1, 1, 3]), [1])


def test_powers_of_two():
    assert powers_of_two(1) == (1,)
    assert powers_of_two(128) == (1, 2, 4, 8, 16, 32, 64, 128)
    assert powers_of_two(100) == (1, 2, 4, 8, 16, 32, 64)


# ---------------------------------------------------------------- PassAtK (Metric)


def _uneven_problems(seed: int, count: int = 12) -> list[list[bool]]:
    gen = torch.Generator().manual_seed(seed)
    problems = []
    for _ in range(count):
        n = int(torch.randint(4, 21, (1,), generator=gen))
        rate = float(torch.rand(1, generator=gen)) ** 2
        problems.append((torch.rand(n, generator=gen) < rate).tolist())
    return problems


def _reference_average(problems: list[list[bool]], k: int) -> float:
    return sum(float(exact_pass_at_k(len(p), sum(p), k)) for p in problems) / len(problems)


def test_pass_at_k_metric_uneven_sample_counts():
    problems = _uneven_problems(0)
    ks = (1, 2, 4)
    metric = PassAtK(ks=ks)
    # Mixed input forms: lists of bools, bool tensors, 0/1 float tensors (rewards), in three updates.
    metric.update(problems[:4])
    metric.update([torch.tensor(p) for p in problems[4:8]])
    metric.update([torch.tensor(p, dtype=torch.float32) for p in problems[8:]])
    result = metric.compute()
    assert list(result) == list(ks)
    for k in ks:
        assert float(result[k]) == pytest.approx(_reference_average(problems, k), abs=1e-12)

    counts = PassAtK(ks=ks)
    counts.update(n=torch.tensor([len(p) for p in problems]), c=torch.tensor([sum(p) for p in problems]))
    for k in ks:
        assert float(counts.compute()[k]) == pytest.approx(_reference_average(problems, k), abs=1e-12)


def test_pass_at_k_metric_dense_tensor_and_default_ks():
    correct = torch.rand(5, 16, generator=torch.Generator().manual_seed(1)) < 0.3  # [P, S]
    metric = PassAtK()
    metric.update(correct)
    result = metric.compute()
    assert list(result) == [1, 2, 4, 8, 16]
    problems = correct.tolist()
    for k in result:
        assert float(result[k]) == pytest.approx(_reference_average(problems, k), abs=1e-12)
    assert list(PassAtK(max_k=8).ks) == [1, 2, 4, 8]


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")
def test_pass_at_k_metric_errors():
    metric = PassAtK(ks=(1, 4))
    metric.update([[True] * 8, [False] * 6, [True, False, True]])
    with pytest.raises(ValueError, match=r"problem 2 has n=3.*k=4 exceeds"):
        metric.compute()
    with pytest.raises(ValueError, match=r"correct\[1\] holds 0.5"):
        PassAtK().update([[1.0, 0.0], [0.5, 1.0]])
    with pytest.raises(ValueError, match=r"correct\[0\] has no samples"):
        PassAtK().update([[]])
    with pytest.raises(ValueError, match=r"problem 1 has n=2, c=3"):
        PassAtK().update(n=[4, 2], c=[1, 3])
    with pytest.raises(ValueError, match="no problems"):
        PassAtK().compute()


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")
def test_pass_at_k_merge_state_equals_single_instance():
    problems = _uneven_problems(2, count=10)
    ks = (1, 2, 4)
    whole = PassAtK(ks=ks)
    whole.update(problems)
    first, second = PassAtK(ks=ks), PassAtK(ks=ks)
    first.update(problems[:3])
    first.update(problems[3:6])
    second.update(problems[6:])
    # The "cat" reduction by hand, as a distributed sync does it: concatenate both instances' states.
    by_hand = PassAtK(ks=ks)
    by_hand.n_samples = torch.cat([torch.cat(first.n_samples), torch.cat(second.n_samples)])
    by_hand.n_correct = torch.cat([torch.cat(first.n_correct), torch.cat(second.n_correct)])
    first.merge_state(second)
    merged = first.compute()
    for k in ks:
        assert float(merged[k]) == pytest.approx(float(whole.compute()[k]), abs=1e-12)
        assert float(by_hand.compute()[k]) == pytest.approx(float(whole.compute()[k]), abs=1e-12)


# ---------------------------------------------------------------- two real processes (gloo)


def _entropy_batch(seed: int, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    a = torch.rand(batch, length, generator=gen) ** 3 * 2  # [B, T]
    b = (a + 0.3 * torch.rand(batch, length, generator=gen)).clamp(min=0)  # [B, T]
    mask = torch.rand(batch, length, generator=gen) < 0.7  # [B, T]
    return a, b, mask


_RANK_PROBLEMS = {0: (0, 7), 1: (7, 10)}  # uneven split of 10 problems
_RANK_ENTROPY = {0: (11, 3, 17), 1: (12, 2, 5)}  # (seed, B, T): uneven valid counts


def _gloo_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )  # fmt: skip
    try:
        problems = _uneven_problems(3, count=10)
        lo, hi = _RANK_PROBLEMS[rank]
        pak = PassAtK(ks=(1, 2, 4))
        pak.update(problems[lo:hi])
        only_rank0 = PassAtK(ks=(1, 2))  # rank 1 sees nothing: gathers an empty state
        if rank == 0:
            only_rank0.update(problems[:4])
        a, b, mask = _entropy_batch(*_RANK_ENTROPY[rank])
        ent = TokenEntropy(quantiles=(0.5, 0.8))
        ent.update(a, mask)
        overlap = HighEntropyOverlap(rho=0.2)
        overlap.update(a, b, mask)
        result = {
            "pass": {k: float(v) for k, v in pak.compute().items()},
            "only_rank0": {k: float(v) for k, v in only_rank0.compute().items()},
            "entropy": {key: float(v) for key, v in ent.compute().items()},
            "overlap": float(overlap.compute()),
            "local_problems": len(pak.n_samples[0]),  # unsynced again after compute
        }
        torch.save(result, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(120)
def test_metrics_compute_globally_across_two_gloo_processes(tmp_path):
    # fork where available: a spawned worker re-imports torch + torchmetrics (~10 s each on two cores)
    # while the gloo part takes well under a second. The workers set one thread first, as DataLoader
    # workers do, so the parent's OpenMP pool is never touched after the fork.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    mp.start_processes(_gloo_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True, start_method=method)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    problems = _uneven_problems(3, count=10)
    parts = [_entropy_batch(*_RANK_ENTROPY[r]) for r in range(2)]
    valid_a = [x for a, _, m in parts for x in a[m].tolist()]
    valid_b = [x for _, b, m in parts for x in b[m].tolist()]
    for rank, result in enumerate(results):
        lo, hi = _RANK_PROBLEMS[rank]
        assert result["local_problems"] == hi - lo
        for k in (1, 2, 4):
            assert result["pass"][k] == pytest.approx(_reference_average(problems, k), abs=1e-12)
        for k in (1, 2):
            assert result["only_rank0"][k] == pytest.approx(_reference_average(problems[:4], k), abs=1e-12)
        assert result["entropy"]["mean"] == pytest.approx(np.mean(valid_a), rel=1e-6)
        assert result["entropy"]["p80"] == pytest.approx(naive_quantile(valid_a, 0.8), rel=1e-6)
        assert result["overlap"] == pytest.approx(loop_overlap(valid_a, valid_b, 0.2), abs=1e-12)


# ---------------------------------------------------------------- token entropy


@pytest.mark.parametrize("temperature", [0.6, 1.0, 1.7])
def test_token_entropy_matches_full_softmax(temperature):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 13, 101, generator=gen) * 4  # [B, T, V]
    logits[0, 0, :50] = float("-inf")  # banned tokens carry zero probability
    logits[1, 2] = logits[1, 2] * 50  # nearly one-hot: entropy ~ 0
    want = naive_entropy(logits, temperature)  # [B, T]
    for chunk_size in (1, 5, 7, 12, 10_000, None):  # 26 positions: 5, 7, 12 leave a short last chunk
        got = token_entropy(logits, temperature=temperature, chunk_size=chunk_size)
        assert got.shape == (2, 13) and got.dtype == torch.float32
        torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=1e-5)

    half = logits.to(torch.bfloat16)
    got = token_entropy(half, temperature=temperature, chunk_size=6)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), naive_entropy(half, temperature), atol=2e-5, rtol=1e-5)


class _LargestFloat32(TorchDispatchMode):
    """Records the largest float32 tensor any operation produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.dtype == torch.float32:
                self.largest = max(self.largest, t.numel())
        return out


def test_token_entropy_upcasts_one_chunk_at_a_time():
    logits = torch.randn(4, 50, 101).to(torch.bfloat16)  # [B, T, V]
    with _LargestFloat32() as mode:
        token_entropy(logits, chunk_size=8)
    assert 0 < mode.largest <= 8 * 101  # never [4, 50, 101] = 20200 floats


def test_token_entropy_no_grad_and_shapes():
    logits = torch.randn(2, 5, 11, requires_grad=True)
    out = token_entropy(logits)
    assert not out.requires_grad
    assert token_entropy(torch.randn(11)).shape == ()
    assert token_entropy(torch.randn(4, 2, 3, 11)).shape == (4, 2, 3)
    uniform = token_entropy(torch.zeros(2, 64))
    torch.testing.assert_close(uniform, torch.full((2,), math.log(64)))
    with pytest.raises(ValueError, match="temperature"):
        token_entropy(logits, temperature=0.0)
    with pytest.raises(TypeError, match="float"):
        token_entropy(torch.ones(3, 4, dtype=torch.long))


def test_quantiles_match_torch_and_numpy():
    values = torch.rand(1001, generator=torch.Generator().manual_seed(4))
    qs = [0.0, 0.1, 0.5, 0.8, 0.95, 1.0]
    got = quantiles(values, qs)
    torch.testing.assert_close(got, torch.quantile(values.double(), torch.tensor(qs, dtype=torch.float64)))
    np.testing.assert_allclose(got.numpy(), np.quantile(values.double().numpy(), qs), rtol=0, atol=1e-12)
    assert quantiles(torch.zeros(0), [0.5]).isnan().all()


def _entropy_updates(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for batch, length in ((4, 30), (2, 13), (5, 7)):
        # Mostly near-deterministic tokens with a heavy tail, like chain-of-thought entropies.
        entropy = torch.rand(batch, length, generator=gen) ** 6 * 3  # [B, T]
        entropy[0, :3] = 0.0
        mask = torch.rand(batch, length, generator=gen) < 0.75  # [B, T]
        entropy[~mask] = float("nan")  # padding may hold anything; it must not count
        batches.append((entropy, mask))
    return batches


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")
def test_token_entropy_metric_matches_numpy():
    batches = _entropy_updates(5)
    metric = TokenEntropy(threshold=0.5, quantiles=(0.5, 0.8, 0.9))
    for entropy, mask in batches:
        metric.update(entropy, mask)
    result = metric.compute()
    valid = np.concatenate([e[m].numpy() for e, m in batches]).astype(np.float64)
    assert set(result) == {"mean", "p50", "p80", "p90", "frac_low", "frac_high"}
    assert float(result["mean"]) == pytest.approx(valid.mean(), rel=1e-6)
    for q in (0.5, 0.8, 0.9):
        assert float(result[f"p{round(q * 100)}"]) == pytest.approx(naive_quantile(valid.tolist(), q), abs=1e-7)
        assert float(result[f"p{round(q * 100)}"]) == pytest.approx(np.quantile(valid, q), abs=1e-7)
    assert float(result["frac_low"]) == pytest.approx(np.mean(valid < 0.01), abs=1e-12)
    assert float(result["frac_high"]) == pytest.approx(np.mean(valid > 0.5), abs=1e-12)

    stats = entropy_stats(batches[0][0], batches[0][1], qs=(0.8,), threshold=0.5)
    first = batches[0][0][batches[0][1]].double().numpy()
    assert float(stats["p80"]) == pytest.approx(np.quantile(first, 0.8), abs=1e-7)

    assert TokenEntropy().compute()["mean"].isnan()
    with pytest.raises(ValueError, match="mask has"):
        metric.update(torch.rand(2, 3), torch.ones(3, 2, dtype=torch.bool))


def test_token_entropy_merge_state():
    batches = _entropy_updates(6)
    whole, left, right = TokenEntropy(), TokenEntropy(), TokenEntropy()
    for entropy, mask in batches:
        whole.update(entropy, mask)
    left.update(*batches[0])
    right.update(*batches[1])
    right.update(*batches[2])
    left.merge_state(right)
    for key, value in whole.compute().items():
        assert float(left.compute()[key]) == pytest.approx(float(value), abs=1e-9), key


def test_token_entropy_reservoir_cap():
    values = torch.arange(20_000, dtype=torch.float32)
    metric = TokenEntropy(threshold=9_999.5, quantiles=(0.5,), max_values=2_000, seed=1)
    for chunk in values.split(1_500):  # chunks do not line up with the cap
        metric.update(chunk)
    stored = torch.cat(metric.values)
    assert stored.numel() == 2_000
    assert stored.unique().numel() == 2_000  # sampled without replacement from the input
    result = metric.compute()
    # Counters stay exact under the cap.
    assert float(result["mean"]) == pytest.approx(9_999.5)
    assert float(result["frac_high"]) == pytest.approx(0.5)
    # A uniform sample: its median lands near the true one (sd of the sample median ~ 2% of the range).
    assert abs(float(result["p50"]) - 9_999.5) < 1_500
    assert abs(float((stored < 10_000).float().mean()) - 0.5) < 0.06


def test_high_entropy_overlap_matches_loop():
    gen = torch.Generator().manual_seed(7)
    metric = HighEntropyOverlap(rho=0.2)
    valid_a, valid_b = [], []
    for batch, length in ((3, 40), (2, 9)):
        a = torch.rand(batch, length, generator=gen) ** 4 * 2  # [B, T]
        b = a + 0.2 * torch.randn(batch, length, generator=gen)  # correlated second model
        mask = torch.rand(batch, length, generator=gen) < 0.8
        metric.update(a, b, mask)
        valid_a += a[mask].tolist()
        valid_b += b[mask].tolist()
    want = loop_overlap(valid_a, valid_b, 0.2)
    assert float(metric.compute()) == pytest.approx(want, abs=1e-12)
    assert 0.3 < want < 1.0  # the data exercise a partial overlap

    a, b = torch.rand(4, 25, generator=gen), torch.rand(4, 25, generator=gen)
    for rho in (0.1, 0.2, 0.5, 1.0):
        want = loop_overlap(a.flatten().tolist(), b.flatten().tolist(), rho)
        assert float(high_entropy_overlap(a, b, rho=rho)) == pytest.approx(want, abs=1e-12)
    assert float(high_entropy_overlap(a, a)) == 1.0
    with pytest.raises(ValueError, match="rho"):
        HighEntropyOverlap(rho=0.0)
    with pytest.raises(ValueError, match="same token sequences"):
        high_entropy_overlap(a, b[:, :3])


# ---------------------------------------------------------------- analysis helpers


def test_accuracy_histogram_bins_and_edges():
    assert list(ACCURACY_BINS) == [
        "0", "(0,0.1]", "(0.1,0.2]", "(0.2,0.3]", "(0.3,0.4]", "(0.4,0.5]",
        "(0.5,0.6]", "(0.6,0.7]", "(0.7,0.8]", "(0.8,0.9]", "(0.9,1)", "1",
    ]  # fmt: skip
    hist = accuracy_histogram([0, 1e-9, 0.1, 0.95, 1.0])
    assert list(hist) == list(ACCURACY_BINS)
    assert hist == {**dict.fromkeys(ACCURACY_BINS, 0), "0": 1, "(0,0.1]": 2, "(0.9,1)": 1, "1": 1}

    # Accuracies as they come out of c / n, also in float32: the edges stay closed on the right.
    acc = [3 / 10, 0.3, 0.30001, 0.9, 0.9000001, 127 / 128, 1 / 128]
    want = {**dict.fromkeys(ACCURACY_BINS, 0), "(0.2,0.3]": 2, "(0.3,0.4]": 1, "(0.8,0.9]": 1, "(0.9,1)": 2,
            "(0,0.1]": 1}  # fmt: skip
    assert accuracy_histogram(acc) == want
    assert accuracy_histogram(torch.tensor(acc, dtype=torch.float32)) == want
    assert accuracy_histogram(torch.tensor([0, 1])) == {**dict.fromkeys(ACCURACY_BINS, 0), "0": 1, "1": 1}
    with pytest.raises(ValueError, match=r"acc\[1\] = 1.5"):
        accuracy_histogram([0.2, 1.5])


def test_solved_set_overlap():
    base = {"p1", "p2", "p3", "p5"}
    rl = {"p2", "p3", "p4"}
    assert solved_set_overlap(base, rl) == {"base_only": 2, "both": 2, "other_only": 1}
    universe = [f"p{i}" for i in range(1, 9)]
    assert solved_set_overlap(base, rl, all_problems=universe)["neither"] == 3

    base_mask = torch.tensor([True, True, False, False, True])
    rl_mask = [True, False, True, False, False]
    assert solved_set_overlap(base_mask, rl_mask) == {"base_only": 2, "both": 1, "other_only": 1, "neither": 1}
    assert solved_set_overlap(np.array(rl_mask), rl_mask) == {
        "base_only": 0, "both": 2, "other_only": 0, "neither": 3,
    }  # fmt: skip
    with pytest.raises(ValueError, match="5 problems but other_solved has 2"):
        solved_set_overlap(base_mask, [True, False])
    with pytest.raises(TypeError, match="same form"):
        solved_set_overlap(base_mask, rl)
    with pytest.raises(ValueError, match="not in all_problems"):
        solved_set_overlap(base, rl, all_problems=["p1"])


def test_bootstrap_interval_is_the_loop_over_resampled_problems():
    import numpy as np

    from reprokit.metrics.functional import bootstrap_interval

    values = [0.0, 0.25, 1.0, 0.5, 0.75, 1.0, 0.0, 0.125]
    other = [0.0, 0.5, 0.75, 0.5, 0.25, 1.0, 0.125, 0.0]
    mean, low, high = bootstrap_interval(values, resamples=500, seed=3)
    rng = np.random.default_rng(3)
    means = []
    for _ in range(500):  # the same draws, one resample at a time
        idx = rng.integers(0, len(values), size=len(values))
        means.append(sum(values[i] for i in idx) / len(values))
    assert mean == pytest.approx(sum(values) / len(values))
    assert (low, high) == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])))
    assert low < mean < high
    diff, dlow, dhigh = bootstrap_interval(values, other, resamples=500, seed=3)
    assert diff == pytest.approx((sum(values) - sum(other)) / len(values))
    assert dlow <= diff <= dhigh
    with pytest.raises(ValueError, match="pair them"):
        bootstrap_interval(values, other[:3])
