"""Which of a model's sequences are switched on: the one reading of a caller's ``present``.

The GUI's checkboxes, the CLI's names, the importance study's mappings and the
trainers' boolean rows all mean the same thing; the engine, pre-processing,
saliency and fine-tuning read them through :func:`presence_flags`, so a wrong
name or count fails with the same :class:`SequenceError` wherever it enters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from napari_metseg.errors import SequenceError

#: The ways to say which sequences are present: ``None`` (all), names, a bool
#: per model sequence, or ``{name: bool}`` (names left out count as present).
Presence = Sequence[str] | Sequence[bool] | Mapping[str, bool] | None


def presence_flags(sequences: Sequence[str], present: Presence) -> dict[str, bool]:
    """``{name: bool}`` for every model sequence, in the model's order.

    Raises :class:`SequenceError` naming unknown sequences, or giving the count
    when a list of flags does not have one entry per model sequence.
    """
    sequences = tuple(sequences)
    if present is None:
        return dict.fromkeys(sequences, True)
    if isinstance(present, Mapping):
        names: Sequence[str] = list(present)
        flags = {name: bool(present.get(name, True)) for name in sequences}
    elif all(isinstance(item, str) for item in present):
        names = list(present)
        flags = {name: name in present for name in sequences}
    else:
        if len(present) != len(sequences):
            raise SequenceError(
                f"presence has {len(present)} entries for the {len(sequences)} sequences "
                f"{list(sequences)}"
            )
        return {name: bool(flag) for name, flag in zip(sequences, present, strict=True)}
    unknown = sorted(set(names) - set(sequences))
    if unknown:
        raise SequenceError(
            f"unknown sequences {unknown} in the presence; the model uses {list(sequences)}"
        )
    return flags


def each_one_off(present: Sequence[str]) -> list[tuple[str | None, tuple[str, ...]]]:
    """``(switched off, sequences on)``: ``(None, present)``, then each of ``present`` off in
    turn, in its order (none when it is the only one: that would leave nothing on). The
    censor-one-out sets of METHOD.md's sequence ranking, which the importance study, the
    training's validation and hard negatives, and the detection bench all run."""
    present = tuple(present)
    if len(present) < 2:
        return [(None, present)]
    return [(None, present)] + [(off, tuple(s for s in present if s != off)) for off in present]
