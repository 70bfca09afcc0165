"""A compact PyTorch SchNet energy, batched over replicas, for side-by-side benchmarks.

This is the model a PyTorch user would write to run many molecular-dynamics replicas of one
small molecule at once: dense all-pairs distances ``[R, N, N]`` (no neighbour list, the same
choice stabie_jax makes for molecules), the continuous-filter convolutions of Schütt et al.
(2017) in torch_geometric's layout, and forces from ``torch.autograd.grad``. Nothing here is
slowed down on purpose; it exists so that :mod:`benchmarks.compare` measures JAX against a fair
PyTorch baseline with the *same weights*.

Architecture (torch_geometric ``SchNet``, as used by MDsim/StABlE for aspirin):

* embedding ``Z -> h_i`` (``[100, hidden]``);
* Gaussian expansion of distances, ``exp(coeff (d - mu_k)^2)`` with ``mu = linspace(0, rc, G)``
  and ``coeff = -1 / (2 (mu_1 - mu_0)^2)``;
* ``n_interactions`` blocks: filter ``W_ij = Dense(ssp(Dense(rbf_ij))) * C(d_ij)`` with the cosine
  cutoff ``C(d) = (cos(pi d / rc) + 1) / 2`` for ``d < rc`` (0 beyond);
  ``m_i = lin2(sum_j lin1(h_j) * W_ij)``, ``h_i += lin(ssp(m_i))``; ``lin1`` has no bias;
* readout ``lin2(ssp(lin1(h_i)))`` (``hidden -> hidden/2 -> 1``), summed over atoms;
* energy (eV) ``= scale * sum_i out_i + shift``, where ``scale``/``shift`` are the energy
  normaliser's std/mean (per molecule, not per atom).

``ssp(x) = softplus(x) - log 2`` (shifted softplus).

Weights come from a stabie_jax SchNet parameter tree (converted through
:func:`stabie_jax.interop.torch_schnet.params_to_state_dict`) or a torch_geometric state dict.

Examples:
  >>> model = TorchSchNet.from_stabie_params(params, config)            # doctest: +SKIP
  >>> energies, forces = model.energy_and_forces(z, positions)          # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from stabie_jax.interop.torch_schnet import SchNetConfig, params_to_state_dict

LOG2 = torch.log(torch.tensor(2.0, dtype=torch.float32)).item()
"""``log 2`` as torch_geometric's ``ShiftedSoftplus`` computes it (float32)."""


def shifted_softplus(x: torch.Tensor) -> torch.Tensor:
    """``softplus(x) - log(2)``, so that ``ssp(0) = 0`` (up to float32 rounding of log 2)."""
    return torch.nn.functional.softplus(x) - LOG2


class TorchSchNet(torch.nn.Module):
    """Batched dense SchNet. Parameters follow torch_geometric's state-dict names.

    Args:
      config: hyperparameters (:class:`stabie_jax.interop.torch_schnet.SchNetConfig`).
      state_dict: torch_geometric-named tensors (``embedding.weight``,
        ``interactions.{i}.mlp.{0,2}.{weight,bias}``, ``interactions.{i}.conv.lin1.weight``,
        ``interactions.{i}.conv.lin2.{weight,bias}``, ``interactions.{i}.lin.{weight,bias}``,
        ``lin1.{weight,bias}``, ``lin2.{weight,bias}``); extra keys are ignored.
      dtype: torch dtype of the parameters and of the computation.
    """

    def __init__(
        self,
        config: SchNetConfig,
        state_dict: Mapping[str, torch.Tensor],
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        self.config = config

        def p(name: str) -> torch.nn.Parameter:
            if name not in state_dict:
                raise ValueError(f"state dict has no tensor {name!r} (torch_geometric SchNet name)")
            return torch.nn.Parameter(torch.tensor(np.asarray(state_dict[name]), dtype=dtype))

        self.embedding = p("embedding.weight")
        self.filter_w0 = torch.nn.ParameterList()
        self.filter_b0 = torch.nn.ParameterList()
        self.filter_w1 = torch.nn.ParameterList()
        self.filter_b1 = torch.nn.ParameterList()
        self.conv_lin1 = torch.nn.ParameterList()
        self.conv_lin2_w = torch.nn.ParameterList()
        self.conv_lin2_b = torch.nn.ParameterList()
        self.lin_w = torch.nn.ParameterList()
        self.lin_b = torch.nn.ParameterList()
        for i in range(config.num_interactions):
            pre = f"interactions.{i}."
            # Stored transposed ([in, out]) so that every layer is a right-multiplication.
            self.filter_w0.append(torch.nn.Parameter(p(pre + "mlp.0.weight").detach().T.clone()))
            self.filter_b0.append(p(pre + "mlp.0.bias"))
            self.filter_w1.append(torch.nn.Parameter(p(pre + "mlp.2.weight").detach().T.clone()))
            self.filter_b1.append(p(pre + "mlp.2.bias"))
            self.conv_lin1.append(
                torch.nn.Parameter(p(pre + "conv.lin1.weight").detach().T.clone())
            )
            self.conv_lin2_w.append(
                torch.nn.Parameter(p(pre + "conv.lin2.weight").detach().T.clone())
            )
            self.conv_lin2_b.append(p(pre + "conv.lin2.bias"))
            self.lin_w.append(torch.nn.Parameter(p(pre + "lin.weight").detach().T.clone()))
            self.lin_b.append(p(pre + "lin.bias"))
        self.out1_w = torch.nn.Parameter(p("lin1.weight").detach().T.clone())
        self.out1_b = p("lin1.bias")
        self.out2_w = torch.nn.Parameter(p("lin2.weight").detach().T.clone())
        self.out2_b = p("lin2.bias")
        # float32 centres and width, as torch_geometric's GaussianSmearing buffer holds them.
        if "distance_expansion.offset" in state_dict:
            offsets = torch.as_tensor(state_dict["distance_expansion.offset"]).to(torch.float32)
        else:
            offsets = torch.linspace(0.0, config.cutoff, config.num_gaussians)
            offsets = offsets.to(torch.float32)
        self.register_buffer("offsets", offsets.to(dtype))
        self.coeff = -0.5 / (offsets[1] - offsets[0]).item() ** 2

    @classmethod
    def from_stabie_params(
        cls, params, config: SchNetConfig, dtype: torch.dtype = torch.float32
    ) -> TorchSchNet:
        """Build from a stabie_jax SchNet ``params`` tree (the Flax ``params`` collection)."""
        return cls(config, params_to_state_dict(params, config), dtype=dtype)

    def energy(self, atomic_numbers: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Total energies of R replicas of one molecule.

        Args:
          atomic_numbers: ``[N]`` int64.
          positions: ``[R, N, 3]`` Å (or ``[N, 3]`` for a single structure).

        Returns:
          ``[R]`` (or scalar) energies, eV.
        """
        single = positions.dim() == 2
        if single:
            positions = positions[None]
        n_atoms = positions.shape[1]
        cutoff = self.config.cutoff
        eye = torch.eye(n_atoms, dtype=torch.bool, device=positions.device)
        # diff[r, i, j] = R_i - R_j: atom j sends to atom i.
        diff = positions[:, :, None, :] - positions[:, None, :, :]
        d2 = (diff * diff).sum(-1)
        # The diagonal gets a dummy distance so that sqrt stays differentiable there.
        dist = torch.sqrt(torch.where(eye, torch.ones_like(d2), d2))
        inside = (~eye) & (dist < cutoff)
        envelope = torch.where(
            inside, 0.5 * (torch.cos(dist * (math.pi / cutoff)) + 1.0), torch.zeros_like(dist)
        )
        rbf = torch.exp(self.coeff * (dist[..., None] - self.offsets) ** 2)  # [R, N, N, G]

        h = self.embedding[atomic_numbers].expand(positions.shape[0], -1, -1)  # [R, N, H]
        for i in range(self.config.num_interactions):
            w = shifted_softplus(rbf @ self.filter_w0[i] + self.filter_b0[i])
            w = (w @ self.filter_w1[i] + self.filter_b1[i]) * envelope[..., None]  # [R,N,N,F]
            x = h @ self.conv_lin1[i]  # [R, N, F]
            m = torch.einsum("rijf,rjf->rif", w, x)
            m = m @ self.conv_lin2_w[i] + self.conv_lin2_b[i]
            h = h + shifted_softplus(m) @ self.lin_w[i] + self.lin_b[i]
        out = shifted_softplus(h @ self.out1_w + self.out1_b) @ self.out2_w + self.out2_b
        energy = self.config.energy_scale * out.sum(dim=(1, 2)) + self.config.energy_shift
        return energy[0] if single else energy

    def energy_and_forces(
        self, atomic_numbers: torch.Tensor, positions: torch.Tensor, create_graph: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Energies (eV) and forces ``-dE/dR`` (eV/Å) by autograd; shapes as :meth:`energy`."""
        with torch.enable_grad():
            if not positions.requires_grad:
                positions = positions.detach().requires_grad_(True)
            energy = self.energy(atomic_numbers, positions)
            (grad,) = torch.autograd.grad(energy.sum(), positions, create_graph=create_graph)
        return energy, -grad
