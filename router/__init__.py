"""The DER router: a cost-aware policy that chains experts, trained offline with PPO, served by the gateway.

Offline (``swarmgate router ...``, config: ``router/toy.yaml`` or your copy)::

    collect   expert answers for every reachable (expert, question, previous answer), batched through the engine
              layer, into a SQLite trajectory cache                                   router.collect, router.cache
    train     PPO (stable-baselines3) on ``ChainRoutingEnv`` over the cache; the actor is exported as
              safetensors + JSON into a new ``vNNNN/`` behind the ``CURRENT`` pointer  router.env, router.train
    eval      quality vs cost on the test split at several cost weights, against each single expert, random
              routing, the always-all-experts chain and the oracle route; table + frontier plot  router.evaluate
    retrain   the gateway's request log -> cache entries -> PPO -> the next version   router.retrain
    spec      a serving spec with a ``kind: chain`` ensemble over the policy          router.deploy

Online, the gateway imports only ``router.policy`` (load, validate, hot reload, decide), ``router.encoders`` and
``router.prompts``: numpy and safetensors, never stable-baselines3 or gymnasium. ``gateway.executors.chain`` runs it.

Modules: ``config`` (YAML -> frozen dataclasses), ``data`` (task folders of JSONL questions), ``scoring`` (the
scorer ``ScorerConfig`` names, from the top-level ``scoring`` package), ``encoders`` (hashed n-grams, local sentence embeddings), ``prompts`` (the
Knowledge Transfer Prompt), ``env``, ``cache``, ``collect``, ``experts`` (engines from a spec), ``train``,
``evaluate``, ``retrain``, ``policy``, ``workflow`` (the jobs behind the CLI), ``cli``.
"""
