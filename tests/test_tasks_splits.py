"""Split properties: deterministic, disjoint, test independent of seed, k-shot balanced per class."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from l2lzo.tasks import Example
from l2lzo.tasks.splits import split_examples

OPTIONS = (" a", " b", " c")


@st.composite
def datasets(draw: st.DrawFn) -> tuple[str, list[Example]]:
    kind = draw(st.sampled_from(["classification", "multiple_choice"]))
    n = draw(st.integers(0, 120))
    labels = draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
    dup = draw(st.integers(0, 5))
    examples = [Example(f"prompt {i}", OPTIONS, lab) for i, lab in enumerate(labels)]
    examples += examples[:dup]  # exact duplicates must not leak across splits
    return kind, examples


sizes = st.one_of(st.none(), st.integers(0, 40))


@settings(max_examples=60, deadline=None)
@given(
    data=datasets(),
    seed=st.integers(0, 2**32),
    other_seed=st.integers(0, 2**32),
    k=sizes,
    dev=st.integers(0, 50),
    test=st.integers(0, 80),
)
def test_split_properties(
    data: tuple[str, list[Example]], seed: int, other_seed: int, k: int | None, dev: int, test: int
) -> None:
    kind, examples = data
    args = {"train_size": k, "dev_size": dev, "test_size": test}
    train, dev_set, test_set = split_examples(examples, kind, seed=seed, **args)
    assert (train, dev_set, test_set) == split_examples(examples, kind, seed=seed, **args)
    _, dev2, test2 = split_examples(examples, kind, seed=other_seed, **args)
    assert test2 == test_set and dev2 == dev_set
    _, _, test3 = split_examples(
        examples, kind, seed=other_seed, train_size=3, dev_size=dev + 7, test_size=test
    )
    assert test3 == test_set
    keys = [{(e.prompt, e.options) for e in part} for part in (train, dev_set, test_set)]
    assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])
    assert sum(map(len, keys)) == len(train) + len(dev_set) + len(test_set)
    unique = len({e.prompt for e in examples})
    assert len(test_set) == min(test, unique // 2) and len(dev_set) <= dev
    pool_size = unique - len(test_set) - len(dev_set)
    if k is None:
        assert len(train) == pool_size
    elif kind == "classification":
        full_pool = [e for e in split_examples(examples, kind, seed=seed, dev_size=dev, test_size=test)[0]]
        for label in range(3):
            available = sum(1 for e in full_pool if e.label == label)
            assert sum(1 for e in train if e.label == label) == min(k, available)
    else:
        assert len(train) == min(k, pool_size)


def test_kshot_balanced_example() -> None:
    examples = [Example(f"p{i}", OPTIONS[:2], i % 2) for i in range(400)]
    train, dev, test = split_examples(examples, "classification", seed=3, train_size=16)
    assert len(test) == 200 and len(dev) == 100
    assert sum(e.label for e in train) == 16 and len(train) == 32
    assert split_examples(examples, "classification", seed=4, train_size=16)[0] != train
