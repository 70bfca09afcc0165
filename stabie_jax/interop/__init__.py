"""Bring models trained with PyTorch codes into stabie_jax (and take them back).

* :func:`import_torch_checkpoint` - an MDsim / torch_geometric SchNet checkpoint (the StABlE
  paper's aspirin models) as ``(potential, params, metadata)``; write it as a stabie_jax model
  checkpoint with :func:`stabie_jax.checkpoint.save_model_checkpoint` or the command line::

      python -m stabie_jax.interop import-schnet CHECKPOINT.pt --out DIR

* :func:`export_torch_checkpoint` - a stabie_jax SchNet as an MDsim-style ``.pt`` file.
* :func:`import_nequip_checkpoint` - a nequip 0.5 NequIP ``.pth`` + ``config.yaml`` (the paper's
  Ac-Ala3-NHMe model) as ``(potential, params, metadata)``; on the command line
  ``python -m stabie_jax.interop import-nequip MODEL.pth CONFIG.yaml --atoms FRAME.xyz --out DIR``.

torch (``pip install 'stabie-jax[torch]'``) is imported only when a function here runs.
"""

from stabie_jax.interop.torch_nequip import import_nequip_checkpoint
from stabie_jax.interop.torch_schnet import (
    SchNetConfig,
    TorchCheckpoint,
    export_torch_checkpoint,
    import_torch_checkpoint,
    params_to_state_dict,
    read_torch_checkpoint,
    state_dict_to_params,
    torch_geometric_reference,
)

__all__ = [
    "SchNetConfig",
    "TorchCheckpoint",
    "export_torch_checkpoint",
    "import_nequip_checkpoint",
    "import_torch_checkpoint",
    "params_to_state_dict",
    "read_torch_checkpoint",
    "state_dict_to_params",
    "torch_geometric_reference",
]
