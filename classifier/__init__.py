"""Complexity classifier: p_complex for a question, in well under a millisecond.

    >>> import classifier
    >>> clf = classifier.load()
    >>> clf.score(["What is the capital of France?"])  # -> array([p_complex])
"""

from .model import Classifier, load

__all__ = ["Classifier", "load"]
