"""Evaluation of generated Findings, offline by default, every convention named.

- :mod:`cxrlib.metrics.labeler`: ``cxrlib-rule-v3``, the 14 CheXpert observations
  (1 / 0 / -1 / blank) and the laterality of six of them, from free text, in pure
  Python (lexicon in ``lexicon.yaml``, no model, no download);
- :mod:`cxrlib.evaluate.iu_validation`: its agreement with the manual MeSH annotations
  of the IU X-ray reports (``docs/labeler.md``);
- :mod:`cxrlib.metrics.clinical`: clinical precision / recall / F1 (micro and macro,
  14 and 5 observations, uncertain as negative and as positive), rule or CheXbert labels;
- :mod:`cxrlib.metrics.radgraph`: RadGraph F1 (simple, partial, complete) from entity
  and relation annotations;
- :mod:`cxrlib.metrics.lexical`: BLEU-1..4, METEOR, ROUGE-L, CIDEr (pycocoevalcap
  conventions);
- :mod:`cxrlib.metrics.grounding`: hallucinated and omitted findings and laterality on
  the phantom, whose ground truth is drawn;
- :mod:`cxrlib.evaluate.attention_grounding`: the share of each generated sentence's
  attention on the named side's lung and the finding's drawn region, against chance;
- :mod:`cxrlib.base.stats`: bootstrap intervals over studies, paired tests, seeds;
- :mod:`cxrlib.evaluate.baselines`: most frequent report and nearest-image retrieval;
- :mod:`cxrlib.evaluate.evaluate`: all of it for one predictions table
  (``cxr evaluate``; ``docs/evaluation.md``).
"""
