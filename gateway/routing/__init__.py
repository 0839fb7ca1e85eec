"""What the gateway needs of a trained router: the served policy format, its state encoders and the chain prompts.

The trainer (``router/``) writes policies; the gateway reads them here, with numpy and safetensors only (never
stable-baselines3 or gymnasium). ``router`` imports this package; nothing here imports ``router``.

- ``policy``: the on-disk format (``policy.json`` + ``policy.safetensors`` in ``vNNNN/`` versions behind a ``CURRENT``
  pointer), ``load_policy`` (validates and names the file and the problem), ``RouterPolicy.decide`` (the greedy
  action in a state), ``PolicyError``.
- ``observation``: ``ObservationLayout``, the state vector the policy reads; the training env builds it with the same
  code.
- ``holder``: ``PolicyHolder``, hot reload that follows the ``CURRENT`` pointer and keeps serving on a bad version.
- ``encoders``: text -> vector (hashed character n-grams, or a local sentence-embedding model), rebuilt from the
  description the policy stores.
- ``prompts``: the Knowledge Transfer Prompt a chain step after the first gets (``chain_prompt`` when serving,
  ``step_prompt`` when collecting trajectories).

``gateway.executors.chain`` serves a policy as a ``kind: chain`` ensemble.
"""
