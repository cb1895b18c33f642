"""Hypothesis strategies shared by the codec tests."""

from __future__ import annotations

from hypothesis import strategies as st

# Texts an encoder's template could get wrong: quotes, backslashes, control characters, line
# separators, non-ASCII, and a lone surrogate (half an emoji from a sloppy upstream).
TRICKY_TEXT = st.text(
    alphabet=st.one_of(st.sampled_from('"\\\n\r\t\x00\x1f\u2028é日🙂'), st.characters(codec="utf-8")), max_size=40
) | st.builds(lambda s: s + "\ud83d", st.text(max_size=5))
