"""The 1-shot RLVR examples shipped inside the package, so a one-example run needs no data download.

π_j is the j-th DSR-sub example ranked by the variance of its training accuracy during full-set
RLVR (Wang et al. 2025, arXiv 2504.20571). Each JSON file holds the problem text without the
chain-of-thought suffix (templates add it), the dataset label and the DSR-sub index. π1's dataset
label is 12.8 while the true answer is ∛2048 ≈ 12.7; the paper reports that training on either
label gives the same results, so both are kept.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

from reprokit.data.errors import DataError
from reprokit.data.readers import Example

__all__ = ["EMBEDDED_NAMES", "get_embedded_examples"]

EMBEDDED_NAMES = ("pi1", "pi2", "pi13", "pi1209")


@cache
def _load(name: str) -> dict:
    text = resources.files("reprokit.data").joinpath("embedded", f"{name}.json").read_text(encoding="utf-8")
    return json.loads(text)


def get_embedded_examples(spec: str, *, label: str = "dataset") -> list[Example]:
    """Examples named in ``spec``: one name (``"pi1"``) or a comma list (``"pi1,pi13"``).

    Args:
        spec: names from :data:`EMBEDDED_NAMES` (``π1`` is accepted for ``pi1``), in the order wanted.
        label: ``"dataset"`` for the label the paper trained on (π1: 12.8) or ``"true"`` for the
            correct answer where it differs (π1: 12.7); examples without a known correction keep
            their dataset label.

    Returns:
        One :class:`Example` per name; ``id`` is the name, ``fields`` holds ``name``,
        ``dsr_sub_index``, ``dataset_answer`` and, for π1, ``true_answer``.
    """
    if label not in ("dataset", "true"):
        raise DataError(f"label={label!r} is not valid; use 'dataset' (π1: 12.8) or 'true' (π1: 12.7)")
    names = [part.strip().lower().replace("π", "pi") for part in spec.split(",")]
    unknown = [name for name in names if name not in EMBEDDED_NAMES]
    if unknown or not any(names):
        raise DataError(
            f"unknown embedded example(s) {', '.join(repr(n) for n in unknown) or repr(spec)}; "
            f"available: {', '.join(EMBEDDED_NAMES)} (a comma list such as 'pi1,pi13' combines them)"
        )
    examples = []
    for name in names:
        record = _load(name)
        answer = record.get("true_answer", record["answer"]) if label == "true" else record["answer"]
        fields = {
            "name": name,
            "dsr_sub_index": record["dsr_sub_index"],
            "dataset_answer": record["answer"],
        }
        if "true_answer" in record:
            fields["true_answer"] = record["true_answer"]
        examples.append(Example(id=name, question=record["question"], answer=answer, fields=fields))
    return examples
