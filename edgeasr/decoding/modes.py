"""The decoding modes, defined once: what each needs and what it falls back to.

Every caller (the torch ``Recognizer``, the ONNX Runtime recognizer, evaluation, the CLI's
``--mode`` choices and the server) reads this registry, so a mode cannot exist in one place and
be missing or different in another.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeasr.errors import EdgeAsrError


@dataclass(frozen=True)
class Mode:
    name: str
    #: the first pass keeps an n-best (prefix beam) rather than the best path
    beam: bool
    #: the second pass at each segment's end: None, "attention" (U2), "whisper" or "cascade"
    second_pass: str | None
    summary: str
    #: the head whose output the search reads: "ctc" (log-probs) or "transducer" (encoder frames
    #: through the predictor and joiner; the CTC head still drives endpointing)
    head: str = "ctc"


MODES: dict[str, Mode] = {mode.name: mode for mode in (
    Mode("ctc_greedy", beam=False, second_pass=None, summary="best path of the CTC head"),
    Mode("ctc_prefix_beam", beam=True, second_pass=None,
         summary="CTC prefix beam search, with the LM and hotwords when given"),
    Mode("attention_rescoring", beam=True, second_pass="attention",
         summary="the beam's n-best rescored by the model's attention decoder (Whisper's for Whisper models)"),
    Mode("transducer_greedy", beam=False, second_pass=None, head="transducer",
         summary="greedy search of the transducer head, at most 3 symbols per frame (transducer models)"),
    Mode("transducer_beam", beam=True, second_pass=None, head="transducer",
         summary="modified beam search of the transducer head, one symbol per frame, with the LM and hotwords "
                 "when given (transducer models)"),
    Mode("whisper_rescoring", beam=True, second_pass="whisper",
         summary="Whisper's decoder and the CTC head decode each segment jointly (Whisper models)"),
    Mode("transducer_whisper", beam=True, second_pass="whisper", head="transducer",
         summary="the transducer's beam streams the partials; at each segment's end Whisper's decoder and the "
                 "transducer decode it jointly (transducer models with a Whisper decoder)"),
    Mode("cascade_rescoring", beam=True, second_pass="cascade",
         summary="a cascaded non-causal encoder over each segment's first-pass frames, then its CTC prefix "
                 "beam (models with model.cascade)"),
)}
MODE_NAMES = tuple(MODES)
#: the mode of a model that only streams a first pass for another's second pass (``--first-pass``):
#: the CTC head's best path, no LM, no second pass of its own
FIRST_PASS_ONLY = MODES["ctc_greedy"].name


def resolve_mode(requested: str, has_attention_decoder: bool, has_whisper_decoder: bool,
                 has_transducer: bool = False, has_cascade: bool = False) -> Mode:
    """The mode that runs: "attention_rescoring" means "rescore with the decoder the model has"
    (Whisper's, or none: then the beam alone); "whisper_rescoring" needs a Whisper decoder."""
    if requested not in MODES:
        raise EdgeAsrError(f"unknown decoding mode '{requested}' (choose from {', '.join(MODE_NAMES)})")
    if requested == "attention_rescoring" and not has_attention_decoder:
        requested = "whisper_rescoring" if has_whisper_decoder else "ctc_prefix_beam"
    if MODES[requested].second_pass == "whisper" and not has_whisper_decoder:
        raise EdgeAsrError(f"{requested} needs a model with a Whisper decoder (edgeasr import whisper)")
    if MODES[requested].head == "transducer" and not has_transducer:
        raise EdgeAsrError(f"{requested} needs a model with a transducer head (model.transducer in its config)")
    if MODES[requested].second_pass == "cascade" and not has_cascade:
        raise EdgeAsrError(f"{requested} needs a model with a cascaded encoder (model.cascade in its config; "
                           "in an ONNX export, one exported with this edgeasr)")
    return MODES[requested]
