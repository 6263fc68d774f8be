"""Evaluation of report text: a rule-based CheXpert-style labeler and its validation.

- :mod:`cxrlib.evaluate.labeler`: ``cxrlib-rule-v1``, the 14 CheXpert observations
  (1 / 0 / -1 / blank) and the laterality of six of them, from free text, in pure
  Python (lexicon in ``lexicon.yaml``, no model, no download);
- :mod:`cxrlib.evaluate.iu_validation`: its agreement with the manual MeSH annotations
  of the IU X-ray reports (``docs/labeler.md``).
"""
