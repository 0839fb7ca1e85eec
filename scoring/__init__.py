"""Scoring: examples, the JSONL files they are read from, and the scorers that judge an answer to one.

The one home of what router evaluation, the searches, the toy world and the benchmarks share, so an answer scores
the same wherever it is scored. It sits at the bottom of the house: it imports no other project package.

- ``examples``: ``Example`` (a question, its reference answer, task, choices, id) and ``read_jsonl`` (errors name
  the file and line);
- ``text``: the one normalisation (surrounding whitespace stripped, inner whitespace collapsed) and the one exact
  match, edit similarity and token F1 on plain strings;
- ``base``: a per-answer ``Scorer`` (what the routing MDP calls), a batch ``Utility`` (what a search maximises),
  ``PerExample`` (a scorer that is both) and the rule that an output cut at ``max_tokens`` scores the floor;
- ``reference``: scorers against a reference answer (exact match, edit similarity, token F1, multiple choice,
  embedding similarity);
- ``reward``: reward models (a sequence-classification model scores (question, answer));
- ``judge``: an LLM judge behind any OpenAI-compatible endpoint.

The search's aggregation over tasks (the multitask harmonic mean) lives in ``offline_search.multitask``.
"""
