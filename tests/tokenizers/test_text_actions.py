"""Text actions (answers, captions) and fixed-width per-step text fields."""

from __future__ import annotations

import numpy as np
import pytest

from omnipolicy.tokenizers import FieldSpec, TimestepSpec, Tokenizer
from omnipolicy.tokenizers.text import END_OF_TEXT

TOK = Tokenizer.default()
SPEC = TimestepSpec(
    observation=(FieldSpec("question", "text", (), "str", n=12), FieldSpec("image", "image", (32, 32, 3), "uint8")),
    action=FieldSpec("answer", "text", (), "str", n=6),
)


def episode(questions: list[str], answers: list[str]):
    images = np.zeros((len(questions), 32, 32, 3), np.uint8)
    return TOK.tokenize_episode(SPEC, {"question": questions, "image": images}, np.array(answers))


def test_answers_round_trip_as_the_loss_target_ending_in_the_end_marker():
    ep = episode(["what colour is it?", "is it round?"], ["rectangle", "no"])
    assert ep.tokens_per_timestep == 12 + 4 + 1 + 6  # question width, 4 patches, separator, answer width
    actions = ep.action_tokens()  # (2, 6)
    np.testing.assert_array_equal(TOK.decode_actions(SPEC, actions), ["rectangle", "no"])
    for row, answer in zip(actions, ["rectangle", "no"]):
        ids = TOK.encode_text(answer)
        np.testing.assert_array_equal(row[: len(ids)], ids)
        assert (row[len(ids):] == TOK.end_id).all() and TOK.decode_text([TOK.end_id]) == END_OF_TEXT
    loss = ep.per_timestep(ep.loss_mask)
    assert loss[:, ep.obs_tokens_per_timestep:].all()  # every answer token is a target
    assert not loss[:, 12:ep.obs_tokens_per_timestep].any()  # patches and separator are not
    # the question's own tokens carry loss (text is a target, Gato), its padding does not
    n_q = [len(TOK.encode_text(q)) for q in ["what colour is it?", "is it round?"]]
    assert loss[:, :12].sum(axis=1).tolist() == n_q
    assert (ep.per_timestep()[1, n_q[1]:12] == TOK.layout.pad_id).all()


def test_a_fixed_width_field_has_the_same_tokens_alone_or_in_an_episode():
    """Inference tokenizes one timestep at a time; training a whole episode: the layout must not differ."""
    both = episode(["what colour is it?", "is it round?"], ["red", "no"])
    alone = episode(["is it round?"], ["no"])
    np.testing.assert_array_equal(both.per_timestep()[1], alone.per_timestep()[0])


def test_decoding_reads_up_to_the_first_end_marker_and_ranges_are_the_text_range():
    ranges = TOK.action_token_ranges(SPEC)
    assert ranges.shape == (6, 2) and (ranges[:, 0] == 0).all() and (ranges[:, 1] == TOK.layout.text_size).all()
    red = TOK.encode_text("red").tolist()
    row = [*red, TOK.end_id, *TOK.encode_text("blue").tolist(), TOK.end_id, TOK.end_id][:6]
    tokens = np.array([row])
    assert TOK.decode_actions(SPEC, tokens).tolist() == ["red"]  # what follows the end marker is ignored
    with pytest.raises(ValueError, match=r"outside the valid range \[0, "):
        TOK.decode_actions(SPEC, np.full((1, 6), TOK.layout.pad_id))


def test_bad_answers_and_text_widths_are_refused_with_their_reason():
    with pytest.raises(ValueError, match=r"Text action 'answer' takes answers of at most 5 tokens"):
        episode(["q"], ["a much longer answer than fits here"])
    with pytest.raises(ValueError, match=r"without '\\n'; timestep 0 is 'red\\nblue'"):
        episode(["q"], ["red\nblue"])
    with pytest.raises(ValueError, match=r"Text field 'question' holds at most 12 tokens, timestep 0 has"):
        episode(["what is the colour of the shape in the middle of the image?"], ["red"])
    with pytest.raises(ValueError, match=r"a text action needs its width in tokens \(n\), got n=None"):
        TimestepSpec((), FieldSpec("answer", "text", (), "str"))
    with pytest.raises(ValueError, match=r"a text width n must be an int >= 1, got 0"):
        FieldSpec("answer", "text", (), "str", n=0)


def test_a_text_action_spec_round_trips_through_json():
    assert TimestepSpec.from_dict(SPEC.to_dict()) == SPEC
