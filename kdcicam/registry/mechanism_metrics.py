"""The mechanism metrics a claim may test besides the paper's accuracies (``METRICS``).

Each is stored, like the accuracies, as a fraction per run, protocol, checkpoint selection and θ
policy, and read in percent (points) by the ledger. The evaluator records them where the test data
has what they need (the synthetic benchmark's region masks, its context-swapped test images);
a claim on one of them whose cells' runs lack it reads "no data". They are measured under the
standard protocol only, so under the paper protocol such a claim always reads "no data".

- ``cam_mass_part`` / ``cam_mass_body`` / ``cam_mass_background`` / ``cam_mass_context``: the share
  of the localization map's total mass on the object's discriminative part, on the rest of its body,
  on the background and on the class's co-occurring context.
- ``pxap``: pixel average precision of the map against the object's mask (wsolevaluation's PxAP).
- ``top1_cls_context_swapped``: Top-1 Cls on test images whose context is another class's.
- ``context_reliance``: how much classification rests on the context: Top-1 Cls minus Top-1 Cls
  with the context swapped.
"""

from __future__ import annotations

MECHANISM_METRICS: tuple[str, ...] = (
    "cam_mass_part",
    "cam_mass_body",
    "cam_mass_background",
    "cam_mass_context",
    "pxap",
    "top1_cls_context_swapped",
    "context_reliance",
)
