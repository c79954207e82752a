"""Pipelines behind ``oodpl train`` and ``oodpl eval``: config in, run directory out.

- :mod:`.build`: config -> records (:class:`~.build.RunData`), tokenizer, reward model / policy
  (preset or checkpoint, LoRA) and engine settings. The public API other pipelines
  (quickstart, study, iterate) build on.
- :mod:`.evaluate`: accuracies (EXRM, DPORM, PL), calibration (ECE/ACE/MCE), reward-difference
  outliers, per domain and as an ID/OOD matrix, and gold/RM scores of sampled generations.
- :mod:`.train`: one function per run kind (sft, rm, dpo, hpl, ppo, meta, meta-test, rjs) that
  builds everything, trains with metrics into ``metrics.jsonl``, saves the final checkpoint,
  evaluates before and after training and writes ``results/*.json`` and the report.
"""
