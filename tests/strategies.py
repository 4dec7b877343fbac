"""Hypothesis strategies shared by the unit tests."""

from __future__ import annotations

from hypothesis import strategies as st

from resilient_connect import Backoff

#: Every jitter a policy accepts: the named modes and proportional fractions.
jitters = st.one_of(
    st.sampled_from(["none", "full", "equal", "decorrelated"]),
    st.floats(min_value=0, max_value=1),
)
#: Valid policies over the whole range of every field, probing pace included.
policies = st.builds(
    Backoff,
    initial=st.floats(min_value=0.001, max_value=100),
    multiplier=st.floats(min_value=1, max_value=1000),
    maximum=st.floats(min_value=0, max_value=1e6, exclude_min=True),
    attempts=st.one_of(st.none(), st.integers(min_value=1, max_value=60)),
    jitter=jitters,
    probe=st.one_of(st.none(), st.floats(min_value=1e-6, max_value=1e3)),
)
