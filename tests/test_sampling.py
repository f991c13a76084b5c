"""The mini-batch sampler (``bilevel.sampling.MiniBatch``): determinism, epochs, roles, shares, the
reference's fixed slices, per-role sizes, torch Datasets, errors, and its plain form."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import TensorDataset

import bilevel
from bilevel.sampling import FIELDS, ROLES, FullBatch, MiniBatch

CPU = torch.device("cpu")


def stub(n: int = 20, n_f: int | None = None, device: torch.device = CPU) -> SimpleNamespace:
    """What ``MiniBatch.start`` reads from a problem: the two data sizes and the device."""
    return SimpleNamespace(n_samples=n, n_samples_f=n if n_f is None else n_f, device=device, name="stub")


def stream(sampler: MiniBatch, seed: int = 0, roles=None, problem=None):
    gen = torch.Generator()
    gen.manual_seed(seed)
    return sampler.start(roles or {}, gen, problem if problem is not None else stub())


def draws(sampler: MiniBatch, role: str, count: int, seed: int = 0, roles=None, problem=None, index: int = 0):
    """``count`` iterations' batches of one role (index ``index``)."""
    s = stream(sampler, seed, roles, problem)
    return [s(k)(role, index) for k in range(count)]


# ---------------------------------------------------------------------------------------------- determinism

def test_deterministic_per_seed():
    for mode in ("permutation", "fixed_slices"):
        sampler = MiniBatch(6, mode=mode)
        a, b = stream(sampler, 3), stream(sampler, 3)
        for k in range(12):
            ba, bb = a(k), b(k)
            for role in ROLES:
                for t in range(3):
                    assert torch.equal(ba(role, t), bb(role, t)), (mode, k, role, t)


def test_different_run_seeds_give_different_draws():
    sampler = MiniBatch(8)
    for role in ROLES:
        one = torch.cat(draws(sampler, role, 5, seed=1))
        two = torch.cat(draws(sampler, role, 5, seed=2))
        assert not torch.equal(one, two), role


def test_the_solver_generator_is_untouched():
    """Sampling draws from generators of its own: the run's generator state is not advanced."""
    gen = torch.Generator()
    gen.manual_seed(5)
    before = gen.get_state().clone()
    s = MiniBatch(4).start({}, gen, stub())
    for k in range(10):
        s(k)("hvp")
    assert torch.equal(gen.get_state(), before)


# ---------------------------------------------------------------------------------------------- epochs

@pytest.mark.parametrize("n", [1, 7, 20, 64, 101])
@pytest.mark.parametrize("size", [1, 3, 8, 20, 64, 500])
def test_every_index_exactly_once_per_epoch(n, size):
    """Cut the concatenated draws into chunks of n: each chunk is a permutation of range(n), whether B
    divides n or not (a batch then crosses an epoch end) and when B > n (a batch is the whole data set)."""
    epochs = 5
    b = min(size, n)
    count = -(-epochs * n // b)
    batches = draws(MiniBatch(size), "hvp", count, seed=n + size, problem=stub(n))
    assert all(t.dtype == torch.long and t.dim() == 1 and t.numel() == b for t in batches)
    flat = torch.cat(batches)[: epochs * n]
    for e in range(epochs):
        chunk = flat[e * n:(e + 1) * n]
        assert torch.equal(torch.sort(chunk).values, torch.arange(n)), (n, size, e)
    for t in batches:  # a batch never holds an index twice, even across an epoch end
        assert torch.unique(t).numel() == t.numel()
    if n > b > 1:  # epochs are reshuffled: not the same order each time
        assert not torch.equal(flat[:n], flat[n:2 * n])


def test_epoch_crossing_batches_are_still_random():
    """The reorder that keeps a crossing batch free of duplicates leaves the new epoch's head uniform: over
    many seeds, each index starts the second epoch about equally often."""
    n, size = 10, 4  # batch 3 takes 2 of epoch 0 and 2 of epoch 1
    hits = torch.zeros(n)
    for seed in range(2000):
        b = draws(MiniBatch(size), "inner", 3, seed=seed, problem=stub(n))[2]
        hits[b[2:]] += 1
    share = hits / hits.sum()
    assert torch.all((share - 1 / n).abs() < 0.025), share


def test_fixed_slices_match_contiguous_slicing():
    """The reference's batching: i·B … (i+1)·B − 1 in data order, a final partial batch (20000 = 78·256 + 32),
    then again from the start, with no shuffling."""
    n, size = 20000, 256
    full = n // size
    batches = draws(MiniBatch(size, mode="fixed_slices"), "inner", 2 * (full + 1), problem=stub(n))
    for i, t in enumerate(batches):
        j = i % (full + 1)
        expected = torch.arange(j * size, min((j + 1) * size, n))
        assert torch.equal(t, expected), i
    assert batches[full].numel() == 32 and batches[full][-1].item() == n - 1


def test_fixed_slices_every_role_slices_its_own_level():
    s = stream(MiniBatch(4, mode="fixed_slices"), problem=stub(10, 6))
    seen = [(s(k)("upper").tolist(), s(k)("hvp").tolist()) for k in range(4)]
    assert [u for u, _ in seen] == [[0, 1, 2, 3], [4, 5], [0, 1, 2, 3], [4, 5]]
    assert [h for _, h in seen] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9], [0, 1, 2, 3]]


# ---------------------------------------------------------------------------------------------- roles

def test_roles_draw_independently():
    b = stream(MiniBatch(8), problem=stub(1000))(0)
    seen = [b(role) for role in ROLES]
    for i in range(len(seen)):
        for j in range(i + 1, len(seen)):
            assert not torch.equal(seen[i], seen[j]), (ROLES[i], ROLES[j])


def test_indices_of_one_role_are_fresh_draws_and_memoised():
    b = stream(MiniBatch(8), problem=stub(1000))(0)
    inner = [b("inner", t) for t in range(4)]
    assert all(not torch.equal(inner[0], t) for t in inner[1:])
    assert b("inner", 2) is inner[2]  # the same (role, index) within an iteration: the same draw


def test_adding_a_role_size_does_not_shift_another_roles_draws():
    """One generator per draw group, seeded by the group's name: another role's size leaves hvp alone."""
    one = draws(MiniBatch(8), "hvp", 5, problem=stub(200))
    two = draws(MiniBatch(8, sizes={"upper": 3, "inner": 5}), "hvp", 5, problem=stub(200))
    assert all(torch.equal(a, b) for a, b in zip(one, two))


def test_shared_roles_get_identical_draws():
    # MiniBatch(share=...)
    b = stream(MiniBatch(8, share={"cross": "hvp"}), problem=stub(500))(0)
    assert torch.equal(b("cross"), b("hvp")) and not torch.equal(b("hvp"), b("lower"))
    # a solver's batch_roles group
    b = stream(MiniBatch(8), roles={"hvp": "hessian", "cross": "hessian"}, problem=stub(500))(0)
    assert torch.equal(b("cross"), b("hvp")) and not torch.equal(b("hvp"), b("inner"))
    # chains resolve: lower → cross → hvp
    b = stream(MiniBatch(8, share={"lower": "cross", "cross": "hvp"}), problem=stub(500))(0)
    assert torch.equal(b("lower"), b("hvp")) and torch.equal(b("cross"), b("hvp"))
    # share overrides the solver's grouping for the roles it names
    sampler = MiniBatch(8, share={"cross": "inner"})
    assert sampler.groups({"hvp": "hessian", "cross": "hessian"}) == {
        "inner": "inner", "upper": "upper", "hvp": "hessian", "cross": "inner", "lower": "lower"}
    b = stream(sampler, roles={"hvp": "hessian", "cross": "hessian"}, problem=stub(500))(0)
    assert torch.equal(b("cross"), b("inner")) and not torch.equal(b("cross"), b("hvp"))
    # a role shared with itself is no share at all
    assert MiniBatch(8, share={"hvp": "hvp"}).share == {}


def test_per_role_sizes():
    s = stream(MiniBatch(16, sizes={"upper": 5, "inner": 3}), problem=stub(100, 30))
    for k in range(10):
        b = s(k)
        up = b("upper")
        assert up.numel() == 5 and int(up.max()) < 30
        assert b("inner", 0).numel() == 3 and b("hvp").numel() == 16 and b("cross").numel() == 16
    # every role by its own size, no batch_size
    sizes = {"inner": 1, "upper": 2, "hvp": 3, "cross": 4, "lower": 5}
    b = stream(MiniBatch(sizes=sizes), problem=stub(100))(0)
    assert {r: b(r).numel() for r in ROLES} == sizes
    # a role of a shared draw without a size of its own takes its group's
    b = stream(MiniBatch(16, sizes={"hvp": 4}, share={"cross": "hvp"}), problem=stub(100))(0)
    assert b("cross").numel() == 4 and torch.equal(b("cross"), b("hvp"))
    b = stream(MiniBatch(16, sizes={"hvp": 4}), roles={"hvp": "h", "cross": "h"}, problem=stub(100))(0)
    assert b("cross").numel() == 4


# ---------------------------------------------------------------------------------------------- devices

def test_no_host_device_copy_per_draw(monkeypatch):
    """Drawing reads no tensor value on the host (no .item, .tolist, .cpu, .numpy, int(t), bool(t)): on a
    GPU each of these would synchronise.  Epoch changes included."""
    s = stream(MiniBatch(7), problem=stub(20, 9))

    def forbidden(name):
        def call(*args, **kwargs):
            raise AssertionError(f"the sampler called Tensor.{name} while drawing")
        return call

    for name in ("item", "tolist", "cpu", "numpy", "__int__", "__bool__", "__index__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden(name))
    got = []
    for k in range(30):
        b = s(k)
        got += [b(role, t) for role in ROLES for t in range(2)]
    monkeypatch.undo()
    assert len(got) == 30 * len(ROLES) * 2 and all(t.device == CPU for t in got)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_indices_on_the_problem_device_without_synchronising():
    device = torch.device("cuda")
    s = stream(MiniBatch(7, sizes={"upper": 3}), problem=stub(20, 9, device=device))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = [s(k)(role, t) for k in range(30) for role in ROLES for t in range(2)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(t.device.type == "cuda" for t in got)
    # the same draws as ... themselves: deterministic on the device too
    again = stream(MiniBatch(7, sizes={"upper": 3}), problem=stub(20, 9, device=device))
    assert all(torch.equal(a, again(k)(r, t)) for (k, r, t), a in
               zip(((k, r, t) for k in range(30) for r in ROLES for t in range(2)), got))


# ---------------------------------------------------------------------------------------------- Datasets

def _ridge(n: int = 40, n_f: int = 24, d: int = 5, data: bool = False):
    """A finite-sum ridge problem: g = mean_i ½(aᵢ·y − bᵢ)² + ½eˣ‖y‖², f = mean_j ½(cⱼ·y − dⱼ)².  With
    ``data=True`` f and g take collated TensorDataset batches ([A_B, b_B]); else index tensors."""
    gen = torch.Generator().manual_seed(0)
    A, b = torch.randn(n, d, generator=gen, dtype=torch.float64), torch.randn(n, generator=gen, dtype=torch.float64)
    C, e = torch.randn(n_f, d, generator=gen, dtype=torch.float64), torch.randn(n_f, generator=gen, dtype=torch.float64)

    def rows(full, batch):
        if batch is None:
            return full
        if data:
            return batch
        return [t[batch] for t in full]

    def g(x, y, batch):
        Ab, bb = rows((A, b), batch)
        return 0.5 * ((Ab @ y - bb) ** 2).mean() + 0.5 * torch.exp(x).sum() * (y ** 2).sum()

    def f(x, y, batch):
        Cb, eb = rows((C, e), batch)
        return 0.5 * ((Cb @ y - eb) ** 2).mean()

    prob = bilevel.BilevelProblem(f, g, torch.zeros(1, dtype=torch.float64), torch.zeros(d, dtype=torch.float64),
                                  n_samples=n, n_samples_f=n_f, name="ridge")
    return prob, TensorDataset(C, e), TensorDataset(A, b)


def test_dataset_batches_are_collated():
    _, dset_f, dset_g = _ridge()
    sampler = MiniBatch(6, sizes={"upper": 4}, data={"f": dset_f, "g": dset_g})
    b = sampler.start({}, torch.Generator().manual_seed(0), None)(0)
    Ab, bb = b("hvp")
    assert Ab.shape == (6, 5) and bb.shape == (6,)
    Cb, eb = b("upper")
    assert Cb.shape == (4, 5) and eb.shape == (4,)
    # the rows are the dataset's rows (some permutation batch of them)
    A = dset_g.tensors[0]
    assert all(any(torch.equal(row, a) for a in A) for row in Ab)
    # a level's size is its dataset's length (no problem needed): 24 validation rows = 6 slices of 4
    sliced = MiniBatch(4, mode="fixed_slices", data={"f": dset_f, "g": dset_g}).start({}, torch.Generator(), None)
    assert torch.equal(sliced(6)("upper")[0], dset_f.tensors[0][:4])


@pytest.mark.parametrize("with_data", [False, True])
def test_solve_counts_samples_of_batches(with_data):
    """A run on mini-batches counts len(batch) samples per call, per level: index batches and collated
    TensorDataset batches alike (the counts equal size × calls)."""
    prob, dset_f, dset_g = _ridge(data=with_data)
    data = {"f": dset_f, "g": dset_g} if with_data else None
    sampler = MiniBatch(8, sizes={"upper": 4}, data=data)
    solver = bilevel.solvers.aid(inner=bilevel.inner.GD(steps=2, lr=0.1), v_solver=bilevel.linear_solvers.cg(steps=3),
                                 lr_x=0.05)
    res = bilevel.solve(prob, solver, batches=sampler, max_iter=7, eval_every=3, seed=1)
    assert res.status == "max_iter"
    c = res.counts
    g_calls = c.grad_y_g + c.grad_x_g + c.hvp + c.cross + c.cross_t + c.linearize  # a graph build reads its batch
    assert c.samples_f == 4 * (c.grad_x_f + c.grad_y_f) > 0
    assert c.samples_g == 8 * g_calls > 0
    last = res.history.last()
    assert last["samples"] == c.samples_f + c.samples_g
    assert last["epochs_f"] == pytest.approx(c.samples_f / 24) and last["epochs_g"] == pytest.approx(c.samples_g / 40)
    # index batches and the same draws through the Datasets give the same iterates
    if with_data:
        plain, *_ = _ridge(data=False)
        ref = bilevel.solve(plain, solver, batches=MiniBatch(8, sizes={"upper": 4}), max_iter=7, eval_every=3, seed=1)
        assert torch.allclose(res.x, ref.x, rtol=0, atol=1e-12) and torch.allclose(res.y, ref.y, rtol=0, atol=1e-12)


def test_solve_with_minibatch_is_deterministic_and_seeded():
    prob, *_ = _ridge()
    solver = bilevel.solvers.aid(inner=bilevel.inner.GD(steps=2, lr=0.1), v_solver=bilevel.linear_solvers.cg(steps=3),
                                 lr_x=0.05)
    one = bilevel.solve(prob, solver, batches=MiniBatch(8), max_iter=5, seed=3)
    two = bilevel.solve(prob, solver, batches=MiniBatch(8), max_iter=5, seed=3)
    other = bilevel.solve(prob, solver, batches=MiniBatch(8), max_iter=5, seed=4)
    full = bilevel.solve(prob, solver, max_iter=5, seed=3)
    assert torch.equal(one.x, two.x) and torch.equal(one.y, two.y)
    assert not torch.equal(one.x, other.x) and not torch.equal(one.x, full.x)


# ---------------------------------------------------------------------------------------------- errors

ERRORS = [
    (dict(batch_size=8, sizes={"hpv": 3}), ValueError, r"MiniBatch: unknown batch role 'hpv'\. Did you mean 'hvp'\?"),
    (dict(batch_size=8, share={"crosss": "hvp"}), ValueError, r"unknown batch role 'crosss'\. Did you mean 'cross'\?"),
    (dict(batch_size=8, share={"cross": "hessian"}), ValueError, r"unknown batch role 'hessian'\..* Roles: inner, upper"),
    (dict(sizes={"upper": 128}), ValueError, r"give batch_size \(every role\) or a size for each role; missing sizes "
                                             r"for inner, hvp, cross, lower"),
    (dict(batch_size=0), ValueError, r"MiniBatch: batch_size must be >= 1; got 0"),
    (dict(batch_size=2.5), TypeError, r"MiniBatch: batch_size must be an integer >= 1; got float"),
    (dict(batch_size=8, sizes={"upper": -1}), ValueError, r"sizes\['upper'\] must be >= 1; got -1"),
    (dict(batch_size=8, sizes=[128]), TypeError, r"sizes must map roles to batch sizes"),
    (dict(batch_size=8, share={"upper": "hvp"}), ValueError, r"share \{'upper': 'hvp'\} joins roles that read different "
                                                             r"levels' data"),
    (dict(batch_size=8, share={"hvp": "upper"}), ValueError, r"joins roles that read different levels' data"),
    (dict(batch_size=8, share={"hvp": "cross", "cross": "hvp"}), ValueError, r"share forms a cycle \(hvp → cross → hvp\)"),
    (dict(batch_size=8, mode="fixed"), ValueError, r"mode must be one of \['permutation', 'fixed_slices'\]; got 'fixed'\. "
                                                   r"Did you mean 'fixed_slices'\?"),
    (dict(batch_size=8, data={"h": []}), ValueError, r"data must map 'f' and/or 'g' to a torch Dataset"),
    (dict(batch_size=8, data={"g": 3}), TypeError, r"data\['g'\] must be a map-style Dataset"),
    (dict(batch_size=8, collate=3), TypeError, r"collate must be callable"),
]


@pytest.mark.parametrize("kwargs, kind, pattern", ERRORS, ids=[p[:30] for _, _, p in ERRORS])
def test_constructor_errors_are_one_line(kwargs, kind, pattern):
    with pytest.raises(kind, match=pattern) as info:
        MiniBatch(**kwargs)
    assert "\n" not in str(info.value)


def test_start_errors_are_one_line():
    no_data = SimpleNamespace(n_samples=None, n_samples_f=None, device=CPU, name="quadratic")
    cases = [
        (lambda: stream(MiniBatch(8), problem=no_data),
         r"MiniBatch: quadratic declares no lower-level data size \(n_samples\), so there is nothing to sample; build "
         r"it with n_samples=/n_samples_f="),
        (lambda: stream(MiniBatch(8), problem=SimpleNamespace(n_samples=10, n_samples_f=None, device=CPU, name="p")),
         r"declares no upper-level data size \(n_samples_f\)"),
        (lambda: stream(MiniBatch(8), roles={"hvpp": "h"}), r"MiniBatch: unknown batch role 'hvpp'\. Did you mean 'hvp'\?"),
        (lambda: stream(MiniBatch(8), roles={"upper": "g", "hvp": "g"}),
         r"roles upper, hvp share a draw but read different levels' data"),
        (lambda: stream(MiniBatch(8, sizes={"hvp": 4, "cross": 5}), roles={"hvp": "h", "cross": "h"}),
         r"roles hvp, cross share a draw but have different batch sizes \[4, 5\]; give them one size"),
        (lambda: stream(MiniBatch(8))(0)("hessian"), r"unknown batch role 'hessian'"),
    ]
    for make, pattern in cases:
        with pytest.raises(ValueError, match=pattern) as info:
            make()
        assert "\n" not in str(info.value)


def test_solve_refuses_minibatch_on_a_problem_without_data():
    prob = bilevel.problems.quadratic()
    if prob.n_samples:
        pytest.skip("the quadratic has data now (finite-sum form)")
    with pytest.raises(ValueError, match=r"declares no lower-level data size") as info:
        bilevel.solve(prob, bilevel.solvers.lancbio(), batches=MiniBatch(8), max_iter=2)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------- plain form

def test_plain_form_round_trip_equality_and_hash():
    a = MiniBatch(256, sizes={"upper": 128}, share={"cross": "hvp"}, mode="fixed_slices")
    d = a.to_dict()
    assert d == {"size": 256, "sizes": {"upper": 128}, "share": {"cross": "hvp"}, "mode": "fixed_slices"}
    assert tuple(d) == FIELDS
    b = MiniBatch.from_dict(d)
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert MiniBatch(256).to_dict() == {"size": 256, "sizes": {}, "share": {}, "mode": "permutation"}
    assert MiniBatch.from_dict({"size": 256}) == MiniBatch(256) == MiniBatch(256, mode="permutation")
    assert MiniBatch(256) != MiniBatch(128) and MiniBatch(256) != MiniBatch(256, mode="fixed_slices")
    assert MiniBatch(256) != FullBatch() and MiniBatch.from_dict(a) is a
    assert repr(a) == "MiniBatch(256, sizes={'upper': 128}, share={'cross': 'hvp'}, mode='fixed_slices')"
    _, df, dg = _ridge()
    with_data = MiniBatch(4, data={"g": dg})
    assert repr(with_data) == "MiniBatch(4, data={'g': TensorDataset(40)})"
    assert with_data == MiniBatch(4, data={"g": dg}) and with_data != MiniBatch(4, data={"g": df})
    with pytest.raises(TypeError, match=r"holds Python objects \(data=/collate=\), which have no plain form"):
        with_data.to_dict()


@pytest.mark.parametrize("spec, kind, pattern", [
    ({"batch_size": 256}, ValueError, r"batches: unknown key 'batch_size'\. Did you mean 'size'\? Valid keys: size, sizes, "
                                      r"share, mode\."),
    ({"size": "big"}, TypeError, r"batches: size must be an integer >= 1; got str"),
    ({"size": 8, "sizes": 3}, TypeError, r"batches: sizes must be a mapping of roles, e.g. \{upper: 128\}"),
    ({"size": 8, "share": "hvp"}, TypeError, r"batches: share must be a mapping of roles, e.g. \{cross: hvp\}"),
    ({"size": 8, "mode": "slices"}, ValueError, r"Did you mean 'fixed_slices'\?"),
    ([256], TypeError, r"batches: expected a mapping like \{size: 256"),
])
def test_from_dict_errors(spec, kind, pattern):
    with pytest.raises(kind, match=pattern) as info:
        MiniBatch.from_dict(spec, where="batches")
    assert "\n" not in str(info.value)
