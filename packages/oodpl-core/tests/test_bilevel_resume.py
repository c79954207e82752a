"""Resuming :func:`oodpl.core.bilevel.meta_train` ([OODPL] Alg. 1) with ``MetaResume``.

A run of ``T`` outer steps equals a run stopped after ``s`` steps (the callback returns True)
plus a run resumed from ``s`` with the saved ``φ`` and outer-optimiser state: ``φ`` bit for bit
and the same per-step domains and inner/outer losses. The toy has three domains, two sampled per
step (so the sampler's replay decides which domains a resumed step sees) and support/query lists
whose lengths are not multiples of the batches drawn per step (so the streams' positions after
the skipped steps decide which batches it sees).
"""

from __future__ import annotations

import copy

import pytest
import torch

from oodpl.core.bilevel import DomainData, MetaResume, meta_train

DT = torch.float64
STEPS, STOP = 7, 3
SIZES = {"a": (3, 2), "b": (5, 3), "c": (4, 5)}  # (support batches, query batches)


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def inner(theta, phi, batch):
    """Weighted least squares ``mean(w (xθ − y)²) + 0.1‖θ‖²``, ``w = B·softmax(x·φ_a)``."""
    x, y = batch
    w = torch.softmax(x @ phi["a"], 0) * len(y)
    return torch.mean(w * (x @ theta["t"] - y) ** 2) + 0.1 * torch.sum(theta["t"] ** 2)


def outer(theta, batch):
    x, y = batch
    return torch.mean((x @ theta["t"] - y) ** 2)


def toy():
    """θ_init, φ and three domains with distinct batches (every batch changes the result)."""
    gen = torch.Generator().manual_seed(0)

    def batch(shift: float):
        x = torch.randn(5, 2, generator=gen, dtype=DT)
        noise = 0.1 * torch.randn(5, generator=gen, dtype=DT)
        return x, x @ torch.tensor([1.0, -shift], dtype=DT) + noise

    domains = {}
    for index, (name, (n_support, n_query)) in enumerate(SIZES.items()):
        support = [batch(0.5 + index) for _ in range(n_support)]
        query = [batch(0.5 + index) for _ in range(n_query)]
        # one factory source (restarted when exhausted), the others cycled lists
        source = (lambda items=support: iter(items)) if name == "b" else support
        domains[name] = DomainData(support=source, query=query)
    theta = {"t": torch.zeros(2, dtype=DT)}
    phi = {"a": torch.tensor([0.2, -0.1], dtype=DT), "b": torch.tensor([0.3], dtype=DT)}
    return theta, phi, domains


def phi_inner(theta, phi, batch):
    return inner(theta, phi, batch) * (1 + 0.1 * torch.tanh(phi["b"]).sum())


OPTIMIZERS = {
    "sgd_momentum": lambda params: torch.optim.SGD(params, lr=0.3, momentum=0.9),
    "adam": lambda params: torch.optim.Adam(params, lr=0.05),
}


def run(optimizer: str, *, stop: int | None = None, resume: MetaResume | None = None, phi=None):
    """``(phi, history, optimizer)`` of a run (stopped after ``stop`` steps when given)."""
    theta, fresh_phi, domains = toy()
    phi = fresh_phi if phi is None else phi
    built: list[torch.optim.Optimizer] = []

    def factory(params):
        built.append(OPTIMIZERS[optimizer](params))
        return built[0]

    def callback(record):
        return stop is not None and record.step + 1 == stop

    result = meta_train(
        phi_inner,
        outer,
        theta,
        phi,
        domains,
        steps=STEPS,
        inner_steps=2,
        inner_lr=0.2,
        outer_optimizer=factory,
        domains_per_step=2,
        seed=5,
        callback=callback,
        resume=resume,
    )
    return result.phi, result.history, built[0]


def summary(history):
    return [
        (r.step, r.domains, r.inner_loss, r.outer_loss, r.hypergrad_norm, r.per_domain)
        for r in history
    ]


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_stopped_plus_resumed_run_equals_the_uninterrupted_run(optimizer):
    full_phi, full_history, _ = run(optimizer)
    part_phi, part_history, part_opt = run(optimizer, stop=STOP)
    assert [r.step for r in part_history] == list(range(STOP))
    saved_phi = {k: v.detach().clone() for k, v in part_phi.items()}
    saved_state = copy.deepcopy(part_opt.state_dict())
    assert saved_state["state"], "the optimizer must carry state for this test to mean anything"

    resumed_phi, resumed_history, _ = run(
        optimizer, resume=MetaResume(STOP, saved_state), phi=saved_phi
    )
    assert [r.step for r in resumed_history] == list(range(STOP, STEPS))  # true step indices
    assert summary(part_history + resumed_history) == summary(full_history)
    for key in full_phi:
        assert torch.equal(resumed_phi[key], full_phi[key]), key
    # the replay matters: the resumed steps do not all sample the same domains, and a run
    # started at step 0 from the saved φ (no replay) would see other domains and batches
    assert len({tuple(r.domains) for r in full_history}) > 1
    _, unreplayed, _ = run(optimizer, phi={k: v.clone() for k, v in saved_phi.items()})
    assert summary(unreplayed[: STEPS - STOP])[0][1:] != summary(resumed_history)[0][1:]


def test_resume_at_the_last_step_runs_nothing():
    phi, history, _ = run("adam", stop=STEPS)
    before = {k: v.detach().clone() for k, v in phi.items()}
    state = copy.deepcopy(run("adam")[2].state_dict())
    resumed_phi, resumed, _ = run("adam", resume=MetaResume(STEPS, state), phi=phi)
    assert resumed == [] and len(history) == STEPS
    assert all(torch.equal(resumed_phi[k], before[k]) for k in before)


def test_resume_without_optimizer_state_is_exact_for_plain_sgd():
    def plain(optimizer_state):
        theta, phi, domains = toy()
        kwargs = {"steps": 5, "inner_steps": 2, "inner_lr": 0.2, "outer_lr": 0.5}
        kwargs |= {"domains_per_step": 2, "seed": 1}
        full = meta_train(phi_inner, outer, theta, phi, domains, **kwargs)
        theta, phi, domains = toy()
        meta_train(phi_inner, outer, theta, phi, domains, callback=lambda r: r.step == 1, **kwargs)
        theta, _, domains = toy()
        resume = MetaResume(2, optimizer_state)
        resumed = meta_train(phi_inner, outer, theta, phi, domains, resume=resume, **kwargs)
        return full, resumed

    full, resumed = plain(None)
    assert all(torch.equal(full.phi[k], resumed.phi[k]) for k in full.phi)
    assert summary(full.history[2:]) == summary(resumed.history)


@pytest.mark.parametrize(
    ("resume", "error", "match"),
    [
        ("3", TypeError, "resume must be a MetaResume"),
        (MetaResume(-1), ValueError, "resume.step must be >= 0"),
        (MetaResume(STEPS + 1), ValueError, r"resume.step must be <= steps=7"),
        (MetaResume(1.5), TypeError, "resume.step must be an int"),  # type: ignore[arg-type]
        (MetaResume(1, [1]), TypeError, "resume.optimizer_state must be"),  # type: ignore[arg-type]
    ],
)
def test_bad_resume_input_names_the_argument(resume, error, match):
    with pytest.raises(error, match=match):
        run("adam", resume=resume)


def test_an_optimizer_state_that_does_not_fit_names_resume_optimizer_state():
    sgd_state = copy.deepcopy(run("sgd_momentum", stop=2)[2].state_dict())
    with pytest.raises(ValueError, match=r"resume\.optimizer_state does not fit .*Adam over 2"):
        run("adam", resume=MetaResume(2, sgd_state))  # SGD's hyper-parameters, not Adam's
    adam_state = copy.deepcopy(run("adam", stop=2)[2].state_dict())
    adam_state["param_groups"][0]["params"] = [0]  # saved for one tensor, phi has two
    with pytest.raises(ValueError, match=r"resume\.optimizer_state does not fit"):
        run("adam", resume=MetaResume(2, adam_state))
    with pytest.raises(ValueError, match=r"resume\.optimizer_state does not fit"):
        run("adam", resume=MetaResume(2, {"state": {}}))
