"""Flows files (flowd.flowfiles): reading YAML and JSON, each problem's one line, and writing
them back byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flowd.errors import ConfigurationError, FlowFileError
from flowd.flowfiles import FlowSpec, derive_keys, dump, read_flows, slugify, spec_of
from flowd.flows import load_from_file
from flowd.models import Flow

EXAMPLES = Path(__file__).parents[2] / "examples"

NOTIFY_PM = """\
key: notify-pm
name: Notify PM on High-Priority Task
trigger_table: tasks
trigger_event: INSERT
match: ALL
is_enabled: true
rules:
- field: priority
  operator: '='
  value: High
actions:
- type: API_CALL
  config:
    body: |
      {"text": "High priority: {{ new.title }}",
       "by": "{{ secrets.SLACK_USER }}"}
    method: POST
    url: https://hooks.slack.com/services/{{ secrets.SLACK_PATH }}
- type: DB_UPDATE
  config:
    field: status
    table: tasks
    value: In Progress
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _problem_lines(path: Path) -> list[str]:
    return [problem.line() for problem in read_flows(path).problems]


def test_a_yaml_flow_reads_into_its_definition() -> None:
    [spec] = read_flows(EXAMPLES / "flows" / "notify-pm.yaml").flows
    flow = spec.to_flow(7)
    assert (flow.flow_id, flow.key, flow.trigger_event) == (7, "notify-pm", "INSERT")
    assert [(r.field, r.operator, r.value) for r in flow.rules] == [("priority", "=", "High")]
    assert [(a.type, a.position) for a in flow.ordered_actions] == [
        ("API_CALL", 0),
        ("DB_UPDATE", 1),
    ]
    assert flow.ordered_actions[0].config["body"] == {"text": "High priority: {{ new.title }}"}


def test_a_file_of_one_flow_and_a_file_of_a_list_read_alike(tmp_path: Path) -> None:
    one = _write(tmp_path, "one.yaml", NOTIFY_PM)
    listed = _write(tmp_path, "list.json", json.dumps([json.loads(dump(_spec(one), "json"))]))
    assert read_flows(one).flows == read_flows(listed).flows


def _spec(path: Path) -> FlowSpec:
    [spec] = read_flows(path).flows
    return spec


def test_a_directory_reads_its_flows_files_in_name_order(tmp_path: Path) -> None:
    flow = "key: {key}\nname: {key}\ntrigger_table: tasks\n"
    _write(tmp_path, "b.yml", flow.format(key="second"))
    _write(tmp_path, "a.yaml", flow.format(key="first"))
    _write(tmp_path, "c.json", json.dumps([{"key": "third", "name": "t", "trigger_table": "t"}]))
    _write(tmp_path, "notes.txt", "not a flows file")
    assert [spec.key for spec in read_flows(tmp_path).flows] == ["first", "second", "third"]


def test_numbers_and_lists_as_rule_values_read_as_the_text_the_column_holds(
    tmp_path: Path,
) -> None:
    path = _write(
        tmp_path,
        "f.yaml",
        "key: k\nname: n\ntrigger_table: t\nrules:\n"
        "- {field: estimate, operator: '>', value: 5}\n"
        "- {field: priority, operator: IN, value: [High, Urgent]}\n"
        "- {field: due_at, operator: '=', value: 2026-01-02}\n",
    )
    assert [rule.value for rule in _spec(path).rules] == ["5", '["High", "Urgent"]', "2026-01-02"]


def test_the_older_json_shape_still_reads(tmp_path: Path) -> None:
    loaded = load_from_file(EXAMPLES / "flows.json")
    assert [(f.flow_id, f.key) for f in loaded if isinstance(f, Flow)] == [(1, None), (2, None)]
    entry = {"flow_id": 5, "name": "n", "trigger_table": "t"}
    [flow] = load_from_file(_write(tmp_path, "f.json", json.dumps({"flows": [entry]})))
    assert isinstance(flow, Flow)
    assert flow.flow_id == 5


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "key: k\nname: n\ntrigger_tabel: tasks\n",
            "f.yaml:3:1: flow k: trigger_tabel: unknown field 'trigger_tabel'"
            " (did you mean 'trigger_table'?)",
        ),
        (
            "key: k\nname: n\ntrigger_table: t\nactions:\n- type: API_CALL\n  confg: {}\n",
            "f.yaml:6:3: flow k: actions[0].confg: unknown field 'confg' (did you mean 'config'?)",
        ),
        (
            "key: k\nname: n\ntrigger_table: t\nrules:\n- {field: a, operater: '='}\n",
            "f.yaml:5:14: flow k: rules[0].operater: unknown field 'operater'"
            " (did you mean 'operator'?)",
        ),
        (
            "key: k\nname: n\ntrigger_table: t\nis_enabled: 'yes'\n",
            "f.yaml:4:1: flow k: is_enabled: wrong type: input should be a valid boolean",
        ),
        (
            "- key: k\n  name: [a list]\n  trigger_table: t\n",
            "f.yaml:2:3: flow k: name: wrong type: input should be a valid string",
        ),
        ("- name: n\n  trigger_table: t\n", "f.yaml:1:3: flow #1: key: required, and missing"),
        (
            "key: Not A Slug\nname: n\ntrigger_table: t\n",
            "f.yaml:1:1: flow Not A Slug: key: not a key: lower-case letters, digits, '-' and"
            " '_', at most 63, starting with a letter or digit",
        ),
        ("- just text\n", "f.yaml:1:3: flow #1: is not a mapping of fields"),
    ],
)
def test_each_problem_of_a_flow_is_one_line_with_file_line_column_flow_and_field(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = _write(tmp_path, "f.yaml", text)
    assert _problem_lines(path) == [f"{tmp_path}/{expected}"]


def test_a_json_file_names_lines_too(tmp_path: Path) -> None:
    text = json.dumps([{"key": "k", "name": "n", "trigger_table": "t", "matsh": "ANY"}], indent=2)
    path = _write(tmp_path, "f.json", text)
    assert _problem_lines(path) == [
        f"{path}:6:5: flow k: matsh: unknown field 'matsh' (did you mean 'match'?)"
    ]


def test_a_duplicate_key_is_a_problem_of_the_later_flow_and_the_first_reads(
    tmp_path: Path,
) -> None:
    flow = "key: same\nname: {name}\ntrigger_table: tasks\n"
    _write(tmp_path, "a.yaml", flow.format(name="first"))
    listed = (
        "- key: other\n  name: o\n  trigger_table: t\n- key: same\n  name: s\n  trigger_table: t\n"
    )
    _write(tmp_path, "b.yaml", listed)
    read = read_flows(tmp_path)
    assert [(spec.key, spec.name) for spec in read.flows] == [("same", "first"), ("other", "o")]
    assert [p.line() for p in read.problems] == [
        f"{tmp_path}/b.yaml:4:3: flow same: key: duplicate key 'same': {tmp_path}/a.yaml:1"
        " has it already"
    ]


def test_one_bad_flow_is_refused_alone_with_its_line(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "f.yaml",
        "- key: good\n  name: g\n  trigger_table: tasks\n- key: bad\n  nmae: b\n",
    )
    good, bad = load_from_file(path)
    assert isinstance(good, Flow)
    assert (good.key, good.flow_id < 0) == ("good", True)  # a stand-in id until the database's
    assert isinstance(bad, FlowFileError)
    assert bad.line == f"{path}:5:3: flow bad: nmae: unknown field 'nmae' (did you mean 'name'?)"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("key: k\nname: [unclosed\n", "f.yaml:3:1: YAML syntax error: expected ',' or ']'"),
        ("key: k\n  name: n\n", "f.yaml:2:7: YAML syntax error: mapping values are not allowed"),
        (
            "key: &a k\nname: *a\ntrigger_table: t\n",
            "f.yaml:2:7: YAML syntax error: aliases (*name) are not allowed here",
        ),
        (
            "key: !!python/object/apply:os.system ['true']\n",
            "f.yaml:1:6: YAML syntax error: could not determine a constructor for the tag",
        ),
        ("42\n", "f.yaml must hold a flow or a list of flows"),
    ],
)
def test_a_file_that_does_not_read_is_one_line_naming_file_line_and_column(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = _write(tmp_path, "f.yaml", text)
    with pytest.raises(ConfigurationError) as raised:
        read_flows(path)
    message = str(raised.value)
    assert "\n" not in message
    assert f"{tmp_path}/{expected}" in message


def test_a_json_syntax_error_names_its_line_and_column(tmp_path: Path) -> None:
    path = _write(tmp_path, "f.json", '[\n  {"key": "k",}\n]')
    with pytest.raises(ConfigurationError, match=r"is not JSON: .* line 2 column 15"):
        read_flows(path)


@pytest.mark.parametrize("form", ["yaml", "json"])
def test_file_to_model_to_file_is_byte_identical(tmp_path: Path, form: str) -> None:
    source = _write(tmp_path, "notify.yaml", NOTIFY_PM)
    canonical = _write(tmp_path, f"canonical.{form}", dump(_spec(source), form))  # type: ignore[arg-type]
    assert dump(_spec(canonical), form) == canonical.read_text()  # type: ignore[arg-type]
    assert _spec(canonical) == _spec(source)


def test_the_shipped_example_flows_are_written_as_flowd_writes_them() -> None:
    for path in sorted((EXAMPLES / "flows").glob("*.yaml")):
        spec = _spec(path)
        assert path.name == f"{spec.key}.yaml"
        assert dump(spec, "yaml") == path.read_text(), path


def test_readme_shows_the_shipped_notify_pm_flow() -> None:
    readme = (EXAMPLES.parent / "README.md").read_text()
    section = readme.split("## Flows as files", 1)[1]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert block == (EXAMPLES / "flows" / "notify-pm.yaml").read_text()


def test_yaml_writes_templates_as_block_literals_and_config_keys_sorted() -> None:
    config = {"url": "u", "body": "a\nb\n", "method": "*"}
    spec = FlowSpec.model_validate(
        {
            "key": "k",
            "name": "n",
            "trigger_table": "t",
            "actions": [{"type": "X", "config": config}],
        }
    )
    text = dump(spec, "yaml")
    assert "    body: |\n      a\n      b\n    method: '*'\n    url: u\n" in text
    assert "schedule" not in text  # unset optional fields are left out
    assert dump(spec, "json").endswith("}\n")
    assert json.loads(dump(spec, "json"))["actions"][0]["config"]["body"] == "a\nb\n"


def test_keys_are_derived_from_names_without_clashing() -> None:
    flows = [
        Flow(flow_id=1, name="Notify PM on High-Priority Task!", trigger_table="t"),
        Flow(flow_id=2, name="notify pm on high priority task", trigger_table="t"),
        Flow(flow_id=3, name="PM", trigger_table="t", key="notify-pm-on-high-priority-task-3"),
        Flow(flow_id=4, name="Notify PM on high-priority task", trigger_table="t"),
        Flow(flow_id=5, name="¡¿", trigger_table="t"),
    ]  # fmt: skip
    assert derive_keys(flows) == {
        1: "notify-pm-on-high-priority-task",
        2: "notify-pm-on-high-priority-task-2",
        3: "notify-pm-on-high-priority-task-3",
        4: "notify-pm-on-high-priority-task-4",
        5: "flow",
    }
    assert len(slugify("x" * 100)) == 63


def test_a_flow_written_from_its_definition_reads_back_as_that_definition() -> None:
    [spec] = read_flows(EXAMPLES / "flows" / "overdue-tasks.yaml").flows
    assert spec_of(spec.to_flow(3), spec.key) == spec
