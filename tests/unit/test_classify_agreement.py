"""flowd's classifier against a plain evaluator of shared/spec/rules.md on generated flows.

The generator (`bench.generate`) draws flows over every operator of the spec and events
with nulls, case variants, time zones, json paths, typed arrays and old-vs-new rows; the
naive evaluator (`bench.naive`) shares no code with flowd. They must agree on every event:
this guards the classifier's index and its once-per-event readings.
"""

from __future__ import annotations

import pytest

from bench.generate import Workload
from bench.naive import BucketedNaive
from flowd.classify import build_index


@pytest.mark.parametrize("seed", range(1, 7))
def test_classifier_agrees_with_the_spec_on_generated_events(seed: int) -> None:
    """Every generated event matches exactly the flows the naive evaluator says, in id order."""
    workload = Workload.make(300, seed=seed, flows_per_tenant=10)
    index, refused = build_index(workload.flows)
    assert refused == []
    naive = BucketedNaive(workload.flows)
    matched = 0
    for number, event in enumerate(workload.events(1500)):
        expected = naive.classify(event)
        assert [flow.flow_id for flow in index.classify(event).flows] == expected, number
        matched += len(expected)
    assert matched > 100  # the workload does match: the comparison is not vacuous
