"""Offline search: compose better models from existing experts with particle swarm optimisation.

- ``pso``: the Model Swarms PSO core over tensors or dicts of tensors (seeded, resumable, patience, restarts);
  ``tracking``: the loop that scores, steps, saves, logs (JSONL) and plots (PNG) a swarm.
- ``model_swarms``: PSO in weight space (LoRA adapters on one base, or full checkpoints) -> a best checkpoint and a
  ``kind: expert`` spec snippet.
- ``hetero_swarms``: role-step PSO over adjacency matrices decoded by G-Decode (``decode``) and weight-step PSO with
  the JFK-score -> ``topology.json`` and a ``kind: dag`` spec snippet, served by ``gateway.executors.dag``.
- ``multitask`` (the harmonic mean over tasks of a ``scoring`` utility: exact match, edit similarity, multiple
  choice, reward model, LLM judge), ``datasets`` (JSONL dev/test), ``generation`` (batched, cached engine calls),
  ``checkpoints`` (adapter IO and checks), ``config`` (YAML configs, validated before any work), ``cli``
  (``swarmgate search swarm|graph``).
"""
