"""`prompt_layout_of`: a request's visual spans from SGLang's own multimodal items."""

from types import SimpleNamespace

from sglang.srt.managers.schedule_batch import Modality, MultimodalDataItem, MultimodalInputs

from radix_ext.sglang.request_plan import prompt_layout_of


def _req(ids, *items):
    return SimpleNamespace(origin_input_ids=ids, multimodal_inputs=MultimodalInputs(mm_items=list(items)))


def test_offsets_are_inclusive_pairs_and_touching_spans_merge():
    a = MultimodalDataItem(modality=Modality.IMAGE, offsets=[(2, 4)])
    b = MultimodalDataItem(modality=Modality.IMAGE, offsets=[(5, 6)])
    assert prompt_layout_of(_req(list(range(10)), a, b)).visual_spans == ((2, 7),)


def test_items_without_offsets_are_found_by_their_pad_values():
    """Original-format LLaVA pads the prompt in the model's `pad_input_ids` and records no offsets."""
    a, b = (MultimodalDataItem(modality=Modality.IMAGE, pad_value=v) for v in (900001, 900002))
    ids = [1, 2, *[900001] * 3, 3, *[900002] * 2, 4]
    assert prompt_layout_of(_req(ids, a, b)).visual_spans == ((2, 5), (6, 8))


def test_no_multimodal_inputs_means_no_visual_span():
    assert not prompt_layout_of(SimpleNamespace(origin_input_ids=[1, 2], multimodal_inputs=None)).has_visual
