"""The PyTorch baseline's own test (``torch_reference_test.py``) runs with the project's tests.

The baseline modules import torch at the top, which the CI's ``test`` extra does not install, so
they are not collected as doctest modules; the test itself skips, with the reason, without torch.
"""

import jax

jax.config.update("jax_debug_nans", True)

collect_ignore = ["mdsim_torch.py", "nose_hoover_torch.py", "schnet_torch.py"]
