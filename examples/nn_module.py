"""A lower level written as an ``nn.Module``: choosing the weight decay of a classifier on validation data.

    lower level  g(x, θ) = CE(net_θ(X_tr), c_tr) + ½ eˣ ‖θ‖²     (training loss of a linear softmax classifier)
    upper level  f(x, θ) = CE(net_θ(X_val), c_val)                (validation loss)

y = θ is the module's parameters as a dict of tensors (``{"weight": …, "bias": …}``); the objectives call the
module through ``torch.func.functional_call``, so any ``nn.Module`` works the same way (autodiff oracles).
Data: scikit-learn's bundled 8×8 digits (no download), 300 training and 300 validation images.

The script checks the AID hypergradient against finite differences of φ, runs LancBiO with explicit step
sizes and prints the summary and the learnt weight decay.

Run: ``python examples/nn_module.py``; ``BILEVEL_EXAMPLES_QUICK=1`` for the small budget of the tests.
"""

import os

import torch
from sklearn.datasets import load_digits
from torch.func import functional_call

import bilevel

QUICK = os.environ.get("BILEVEL_EXAMPLES_QUICK", "") not in ("", "0")
torch.set_num_threads(1)
torch.manual_seed(0)

images, labels = load_digits(return_X_y=True)
X = torch.tensor(images / 16.0, dtype=torch.float64)  # pixels in [0, 1]
c = torch.tensor(labels, dtype=torch.long)
perm = torch.randperm(len(c), generator=torch.Generator().manual_seed(0))
tr, val = perm[:300], perm[300:600]
X_tr, c_tr, X_val, c_val = X[tr], c[tr], X[val], c[val]

net = torch.nn.Linear(64, 10).double()
params = {name: p.detach().clone() for name, p in net.named_parameters()}


def g(x, theta, batch=None):
    loss = torch.nn.functional.cross_entropy(functional_call(net, theta, (X_tr,)), c_tr)
    return loss + 0.5 * torch.exp(x[0]) * sum((p ** 2).sum() for p in theta.values())


def f(x, theta, batch=None):
    return torch.nn.functional.cross_entropy(functional_call(net, theta, (X_val,)), c_val)


def accuracy(theta, X_, c_) -> float:
    with torch.no_grad():
        return float((functional_call(net, theta, (X_,)).argmax(1) == c_).double().mean())


x0 = torch.tensor([-2.0], dtype=torch.float64)  # weight decay e⁻² ≈ 0.14
problem = bilevel.BilevelProblem(f, g, x0, params, name="digits-weight-decay")
print(bilevel.testing.check_hypergradient(problem))

res = bilevel.solve(problem, bilevel.solvers.lancbio(lr_x=1.0, lr_y=1.0, inner_steps=10, m=10),
                    max_iter=20 if QUICK else 200, eval_every=10, seed=0)
print(res.summary())
theta = res.y_tree  # the parameters as the dict the module takes
print(f"weight decay: {torch.exp(x0[0]):.3g} → {torch.exp(res.x[0]):.3g}; validation accuracy "
      f"{accuracy(params, X_val, c_val):.3f} (initial parameters) → {accuracy(theta, X_val, c_val):.3f}")
