"""Language models for the search: word n-grams (``ngram``), built from text (``build``)."""

from edgeasr.lm.ngram import NgramLM, train_ngram

__all__ = ["NgramLM", "train_ngram", "load_lm"]


def load_lm(path):
    """An ``NgramLM`` from an LM directory (``edgeasr lm train --out``) or an ARPA file (.arpa[.gz])."""
    from edgeasr.lm.build import lm_file

    return NgramLM.read_arpa(lm_file(path))
