"""Offline search: compose better models from existing experts with particle swarm optimisation.

- ``pso``: the Model Swarms PSO core over tensors or dicts of tensors (seeded, resumable, patience, restarts);
  ``tracking``: the loop that scores, steps, saves, logs (JSONL) and plots (PNG) a swarm.
- ``model_swarms``: PSO in weight space (LoRA adapters on one base, or full checkpoints) -> a best checkpoint and a
  ``kind: expert`` spec snippet.
- ``hetero_swarms``: role-step PSO over adjacency matrices decoded by G-Decode (``decode``) and weight-step PSO with
  the JFK-score -> ``topology.json`` and a ``kind: dag`` spec snippet, served by ``gateway.executors.dag``.
- ``base``: what those two searches inherit (engines, utilities, cached generation, the summary's shared parts).
- ``blend_search``: PSO over a ``kind: blend`` ensemble's mixture weights (and gate threshold) -> a ``kind: blend``
  spec snippet.
- ``evaluate`` (expert handles from the engine pool, prompts, building utilities, scoring a model on a split, spec
  snippets), ``multitask`` (the harmonic mean over tasks of a ``scoring`` utility: exact match, edit similarity,
  multiple choice, reward model, LLM judge), ``datasets`` (JSONL dev/test splits), ``generation`` (batched, cached
  engine calls), ``checkpoints`` (adapter IO and checks), ``config`` (YAML configs, validated before any work; the
  default configs in ``configs/``), ``cli`` (``swarmgate search swarm|graph|blend|config|validate``).
"""
