"""Day 34 checker: ngram_draft -- n-gram prompt lookup. Run: pytest checkers/day_34

Scripted cases with hand-worked answers (the latest match wins, falling back to shorter n-grams,
no match, a match whose continuation runs into the end of the context, repeated tokens, n longer
than the context, k = 0, bad arguments), then a property test: hypothesis draws contexts over a
tiny vocabulary (so n-grams repeat a lot) and checks every proposal against the rule, stated
below in `rule` by brute force over every candidate.
"""
import pytest


def one_line_value_error(fn, *args, **kwargs):
    with pytest.raises(ValueError) as e:
        fn(*args, **kwargs)
    msg = str(e.value)
    assert msg and "\n" not in msg, f"one line, please: {msg!r}"


def rule(tokens, k, n, min_n):
    """The spec, by brute force: every (m, i) such that the m tokens at i equal the last m tokens
    and i < len - m (an earlier occurrence, not the suffix itself); the largest m wins, then the
    largest i; propose up to k tokens from i + m on."""
    L = len(tokens)
    found = [(m, i) for m in range(min_n, n + 1) for i in range(L) if m <= L and i < L - m
             and tokens[i:i + m] == tokens[L - m:]]
    if not found or k == 0:
        return []
    m, i = max(found)
    return tokens[i + m:i + m + k]


# ---- scripted cases ------------------------------------------------------------------------------------
def test_the_latest_match_wins(day):
    tokens = [1, 2, 3, 9, 1, 2, 3, 8, 5, 1, 2, 3]
    got = day.ngram_draft(tokens, 2, n=3)
    assert got == [8, 5], (f"[1, 2, 3] occurs at 0 (followed by 9, 1) and at 4 (followed by 8, 5): the latest "
                           f"occurrence wins (recent context predicts best), expected [8, 5], got {got}")


def test_falls_back_to_shorter_ngrams(day):
    tokens = [5, 6, 7, 1, 9, 9, 4, 7, 1]
    got = day.ngram_draft(tokens, 3, n=3)
    assert got == [9, 9, 4], (f"the 3-gram [4, 7, 1] never occurred before; the 2-gram [7, 1] did, at 2: "
                              f"expected [9, 9, 4], got {got}")
    assert day.ngram_draft(tokens, 3, n=3, min_n=3) == [], "min_n=3: no shorter n-gram may be tried"
    got = day.ngram_draft([4, 1, 8, 2, 5, 3, 2], 2, n=3)
    assert got == [5, 3], f"only the 1-gram [2] occurred before (at 3): expected [5, 3], got {got}"


def test_longer_ngram_beats_a_later_shorter_one(day):
    tokens = [1, 2, 3, 4, 0, 3, 5, 1, 2, 3]
    got = day.ngram_draft(tokens, 1, n=3)
    assert got == [4], (f"[1, 2, 3] occurred at 0 (then 4); [3] alone occurred later, at 5 (then 5): the "
                        f"longest n-gram that matches wins, expected [4], got {got}")


def test_no_match_proposes_nothing(day):
    assert day.ngram_draft([1, 2, 3, 4, 5], 4) == [], "no token repeats: nothing to propose"
    assert day.ngram_draft([], 4) == [], "an empty context proposes nothing"
    assert day.ngram_draft([7], 4) == [], "a single token has nothing before it"


def test_a_continuation_that_runs_into_the_end_is_not_padded(day):
    tokens = [9, 1, 2, 7, 1, 2]
    got = day.ngram_draft(tokens, 5, n=2)
    assert got == [7, 1, 2], (f"[1, 2] occurred at 1; only 3 tokens follow it (7, 1, 2): propose what exists, "
                              f"never pad, expected [7, 1, 2], got {got}")


def test_repeated_tokens_and_the_suffix_itself(day):
    """In [7] * 6 the latest earlier occurrence of [7, 7, 7] starts at 2 and overlaps the suffix:
    that is allowed, and one token follows it. The suffix itself (at 3) is not an occurrence:
    nothing follows it."""
    got = day.ngram_draft([7] * 6, 4, n=3)
    assert got == [7], (f"[7] * 6, n=3: the latest occurrence before the suffix starts at 2, followed by one "
                        f"7; expected [7], got {got} (an empty list: did the suffix match itself?)")
    got = day.ngram_draft([1, 2, 1, 2, 1, 2], 3, n=2)
    assert got == [1, 2], f"[1, 2] * 3, n=2: the latest earlier [1, 2] starts at 2, then 1, 2; got {got}"


def test_n_longer_than_the_context(day):
    assert day.ngram_draft([3, 3], 2, n=5) == [3], "n=5 on 2 tokens: the 1-gram [3] occurred at 0, then 3"
    assert day.ngram_draft([4, 5, 4], 3, n=8, min_n=2) == [], "min_n=2 on [4, 5, 4]: no 2-gram repeats"


def test_k_zero_and_the_input_is_left_alone(day):
    tokens = [1, 2, 3, 1, 2]
    assert day.ngram_draft(tokens, 0) == [], "k = 0 drafts nothing"
    got = day.ngram_draft(tokens, 1)
    assert got == [3] and tokens == [1, 2, 3, 1, 2], f"got {got}; the context must not change: {tokens}"
    got.append(99)
    assert tokens == [1, 2, 3, 1, 2], "the proposal must be a new list, not a view of the context"


@pytest.mark.parametrize("kwargs", [dict(k=-1), dict(k=2, n=0), dict(k=2, n=3, min_n=0),
                                    dict(k=2, n=2, min_n=3)])
def test_bad_arguments(day, kwargs):
    one_line_value_error(day.ngram_draft, [1, 2, 1], **kwargs)


# ---- the property test -----------------------------------------------------------------------------------
try:
    from hypothesis import given, settings, strategies as st
except ImportError:                              # pragma: no cover - hypothesis is a course dependency
    given = None


def test_every_proposal_follows_the_rule(day):
    """Random contexts over 1..4 distinct tokens, k 0..8, n 1..5, min_n 1..n."""
    if given is None:
        pytest.fail("day 34's property test needs hypothesis: pip install hypothesis")

    @settings(max_examples=400, derandomize=True, database=None, deadline=None)
    @given(data=st.data())
    def check(data):
        vocab = data.draw(st.integers(1, 4))
        tokens = data.draw(st.lists(st.integers(0, vocab - 1), max_size=40))
        k = data.draw(st.integers(0, 8))
        n = data.draw(st.integers(1, 5))
        min_n = data.draw(st.integers(1, n))
        got = day.ngram_draft(list(tokens), k, n=n, min_n=min_n)
        what = f"ngram_draft({tokens}, k={k}, n={n}, min_n={min_n}) = {got}"
        assert isinstance(got, list) and len(got) <= k, f"{what}: a list of at most k tokens"
        L = len(tokens)
        if got:                                  # it comes from the context: a run that follows an occurrence
            sources = [(m, i) for m in range(min_n, n + 1) for i in range(L - m)
                       if tokens[i:i + m] == tokens[L - m:] and tokens[i + m:i + m + len(got)] == got]
            assert sources, f"{what}: not a run of the context that follows an earlier occurrence of its suffix"
        want = rule(tokens, k, n, min_n)
        assert got == want, f"{what}, expected {want} (the longest n-gram, then the latest occurrence, up to k)"

    check()


# Ids whose bytes overlap when shifted by one or two bytes: 256 is 00 01 00 00, 1 is 01 00 00 00, ...
BYTE_SHARING_IDS = [0, 1, 2, 256, 257, 512, 65536, 65537, 65792, 131328, 16777216, 16843009]


def test_large_ids_that_share_bytes_follow_the_rule(day):
    """Vocabularies reach 128k ids and more. A search over the tokens' bytes (or characters) must
    not find a run that starts inside a token: random contexts over ids whose bytes overlap."""
    if given is None:
        pytest.fail("day 34's property test needs hypothesis: pip install hypothesis")

    @settings(max_examples=400, derandomize=True, database=None, deadline=None)
    @given(data=st.data())
    def check(data):
        tokens = data.draw(st.lists(st.sampled_from(BYTE_SHARING_IDS), max_size=40))
        k = data.draw(st.integers(1, 6))
        n = data.draw(st.integers(1, 4))
        min_n = data.draw(st.integers(1, n))
        got = day.ngram_draft(list(tokens), k, n=n, min_n=min_n)
        want = rule(tokens, k, n, min_n)
        assert got == want, (f"ngram_draft({tokens}, k={k}, n={n}, min_n={min_n}) = {got}, expected {want}: "
                             "an occurrence is a run of whole tokens")

    check()
