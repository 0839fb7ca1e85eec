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

Online, the gateway serves what ``train`` publishes with ``gateway.routing`` (the policy format, loading and hot
reload, the encoders, the chain prompts: numpy and safetensors, never stable-baselines3 or gymnasium) and
``gateway.executors.chain``. ``router`` imports ``gateway``; ``gateway`` never imports ``router``.

Modules: ``config`` (YAML -> frozen dataclasses), ``data`` (task folders of JSONL questions), ``scoring`` (the
scorer ``ScorerConfig`` names, from the top-level ``scoring`` package), ``judges`` (reference-free scorers for logged
traffic, combined with user feedback), ``env`` (the MDP, gymnasium), ``cache`` (the trajectory cache), ``collect``,
``experts`` (engines from a spec), ``train`` (PPO and export), ``publish`` (writes policy versions and moves
``CURRENT``), ``baselines`` (keyword router, supervised route classifier), ``evaluate``, ``retrain``, ``deploy`` (the
serving spec), ``workflow`` (the jobs behind the CLI), ``cli``.
"""
