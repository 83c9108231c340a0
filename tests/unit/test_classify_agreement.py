"""flowd's classifier against a plain evaluator of shared/spec/rules.md on generated flows.

The generator (`bench.generate`) draws flows over every operator of the spec and events
with nulls, case variants, time zones, json paths, typed arrays and old-vs-new rows; the
naive evaluator (`bench.naive`) shares no code with flowd. They must agree on every event:
this guards the classifier's index and its once-per-event readings. The flows the index
reports for lacking the old row must be those whose own predicate says so.
"""

from __future__ import annotations

import pytest

from bench.generate import Workload
from bench.naive import BucketedNaive, sees
from flowd.models import ChangeEvent, Flow
from flowd.rules import build_index, compile_flow


@pytest.mark.parametrize("seed", range(1, 7))
def test_classifier_agrees_with_the_spec_on_generated_events(seed: int) -> None:
    """Every generated event matches exactly the flows the naive evaluator says, in id order."""
    workload = Workload.make(300, seed=seed, flows_per_tenant=10)
    index, refused = build_index(workload.flows)
    assert refused == []
    naive = BucketedNaive(workload.flows)
    predicates = {flow.flow_id: compile_flow(flow) for flow in workload.flows}

    def reports(flow: Flow, event: ChangeEvent) -> bool:
        return predicates[flow.flow_id].evaluate(event)[1]

    matched = reported = 0
    for number, event in enumerate(workload.events(1500)):
        expected = naive.classify(event)
        classification = index.classify(event)
        assert [flow.flow_id for flow in classification.flows] == expected, number
        matched += len(expected)
        # the flows to report for their CHANGED* rules, as each flow's own rules say
        lacking = [f.flow_id for f in workload.flows if sees(f, event) and reports(f, event)]
        assert [flow.flow_id for flow in classification.needs_full_identity] == lacking, number
        reported += len(lacking)
    assert matched > 100  # the workload does match: the comparison is not vacuous
    assert reported > 10
