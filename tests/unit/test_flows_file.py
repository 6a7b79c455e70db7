"""`.steplog/flows.json`: read into flow definitions, every problem reported with the file,
the line and the path of the field at fault."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from steplog.errors import FlowsFileError
from steplog.producers.flows_file import load_flows_file
from steplog.schemas.codec import decode_flow, encode

VALID = """\
{
  "flows": [
    {
      "slug": "checkout",
      "name": "Checkout",
      "step_deadline_ms": 30000,
      "steps": [
        {"sdk_step_key": "reserve-stock", "name": "Reserve stock"},
        {"sdk_step_key": "charge-card", "name": "Charge card", "deadline_ms": 10000},
        {"sdk_step_key": "send-receipt"}
      ],
      "edges": [
        {"source": "reserve-stock", "target": "charge-card"},
        {"source": "charge-card", "target": "send-receipt"}
      ]
    },
    {
      "slug": "refund",
      "steps": [{"sdk_step_key": "refund-card"}]
    }
  ]
}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "flows.json"
    path.write_text(text, encoding="utf-8")
    return path


def error_for(tmp_path: Path, text: str) -> FlowsFileError:
    path = write(tmp_path, text)
    with pytest.raises(FlowsFileError) as caught:
        load_flows_file(path, "shop")
    assert caught.value.path == str(path)
    assert str(caught.value).startswith(f"{path}:")
    return caught.value


def edit(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


def test_a_valid_file_gives_one_definition_per_flow(tmp_path: Path) -> None:
    checkout, refund = load_flows_file(write(tmp_path, VALID), "shop")
    assert (checkout.project, checkout.slug, checkout.name) == ("shop", "checkout", "Checkout")
    assert checkout.key == "shop/checkout"
    assert [s.sdk_step_key for s in checkout.steps] == [
        "reserve-stock",
        "charge-card",
        "send-receipt",
    ]
    assert checkout.deadline_ms("charge-card") == 10_000
    assert checkout.deadline_ms("send-receipt") == 30_000
    assert checkout.downstream("reserve-stock") == {"charge-card", "send-receipt"}
    assert refund.edges == [] and refund.step_deadline_ms is None
    assert checkout.ts.tzinfo is not None
    assert decode_flow(encode(checkout)) == checkout  # what push_flows sends decodes back


def test_invalid_json_names_the_line_and_column(tmp_path: Path) -> None:
    error = error_for(tmp_path, edit(VALID, '"name": "Checkout",', '"name": "Checkout",,'))
    assert error.line == 5
    assert "not valid JSON" in error.problem and "column" in error.problem


def test_a_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(FlowsFileError, match="no such file"):
        load_flows_file(tmp_path / "absent.json", "shop")


def test_an_unknown_field_names_its_line_path_and_the_expected_fields(tmp_path: Path) -> None:
    text = edit(VALID, '"deadline_ms": 10000}', '"deadline_ms": 10000, "timeout": 5}')
    error = error_for(tmp_path, text)
    assert (error.line, error.field) == (9, "flows[0].steps[1].timeout")
    assert "unknown field" in error.problem and "sdk_step_key" in error.problem


def test_an_unknown_field_of_a_flow_is_found_on_its_own_line(tmp_path: Path) -> None:
    text = edit(VALID, '      "slug": "refund",\n', '      "slug": "refund",\n      "owner": "x",\n')
    error = error_for(tmp_path, text)
    assert (error.line, error.field) == (19, "flows[1].owner")


def test_a_missing_field_names_the_object_it_is_missing_from(tmp_path: Path) -> None:
    text = edit(VALID, '{"sdk_step_key": "send-receipt"}', '{"name": "Send receipt"}')
    error = error_for(tmp_path, text)
    assert (error.line, error.field) == (10, "flows[0].steps[2].sdk_step_key")
    assert error.problem == "required field is missing"


def test_a_missing_slug_names_the_flow(tmp_path: Path) -> None:
    error = error_for(tmp_path, edit(VALID, '      "slug": "refund",\n', ""))
    assert (error.line, error.field) == (17, "flows[1].slug")


def test_a_value_of_the_wrong_type_names_its_line(tmp_path: Path) -> None:
    error = error_for(tmp_path, edit(VALID, '"step_deadline_ms": 30000', '"step_deadline_ms": "30s"'))
    assert (error.line, error.field) == (6, "flows[0].step_deadline_ms")
    assert '"30s"' in error.problem


def test_a_nested_name_is_not_mistaken_for_the_flows_name(tmp_path: Path) -> None:
    # The steps (each with a "name") come before the flow's own bad "name".
    text = """\
{"flows": [{
  "slug": "checkout",
  "steps": [
    {"sdk_step_key": "a", "name": "A"}
  ],
  "name": 42
}]}
"""
    error = error_for(tmp_path, text)
    assert (error.line, error.field) == (6, "flows[0].name")


def test_duplicate_step_keys_name_the_second_one(tmp_path: Path) -> None:
    text = edit(VALID, '{"sdk_step_key": "send-receipt"}', '{"sdk_step_key": "charge-card"}')
    error = error_for(tmp_path, text)
    assert (error.line, error.field) == (10, "flows[0].steps[2].sdk_step_key")
    assert "'charge-card' is declared twice" in error.problem


def test_an_edge_to_an_unknown_step_names_the_edge_end(tmp_path: Path) -> None:
    text = edit(VALID, '"target": "send-receipt"', '"target": "ship"')
    error = error_for(tmp_path, text)
    assert (error.line, error.field) == (14, "flows[0].edges[1].target")
    assert "'ship' is not one of the flow's steps" in error.problem


def test_an_edge_from_a_step_to_itself_is_refused(tmp_path: Path) -> None:
    text = edit(VALID, '"source": "charge-card"', '"source": "send-receipt"')
    error = error_for(tmp_path, text)
    assert (error.line, error.field) == (14, "flows[0].edges[1]")


def test_duplicate_slugs_name_the_second_flow(tmp_path: Path) -> None:
    error = error_for(tmp_path, edit(VALID, '"slug": "refund"', '"slug": "checkout"'))
    assert (error.line, error.field) == (18, "flows[1].slug")
    assert "already declared at flows[0]" in error.problem


def test_a_key_written_twice_in_one_object_is_refused(tmp_path: Path) -> None:
    text = edit(VALID, '"name": "Checkout",', '"name": "Checkout", "name": "Kasse",')
    error = error_for(tmp_path, text)
    assert (error.line, error.field) == (5, "flows[0].name")
    assert "twice" in error.problem


@pytest.mark.parametrize(
    ("text", "field", "fragment"),
    [
        ("[]", "", "expected an object"),
        ("{}", "flows", "required field is missing"),
        ('{"flows": {}}', "flows", "expected an array"),
        ('{"flows": [], "extra": 1}', "extra", "unknown field"),
        ('{"flows": ["checkout"]}', "flows[0]", "expected an object"),
        ('{"flows": [{"slug": "a", "steps": []}]}', "flows[0].steps", "at least 1"),
        ('{"flows": [{"slug": "a", "steps": ["x"]}]}', "flows[0].steps[0]", "valid dictionary"),
    ],
)
def test_the_shape_of_the_document_is_checked(
    tmp_path: Path, text: str, field: str, fragment: str
) -> None:
    error = error_for(tmp_path, text)
    assert error.field == field and fragment in error.problem
    assert error.line == 1


def test_a_schema_reference_is_allowed_for_editors(tmp_path: Path) -> None:
    document = json.loads(VALID)
    document["$schema"] = "https://example.invalid/flows.schema.json"
    assert len(load_flows_file(write(tmp_path, json.dumps(document)), "shop")) == 2
