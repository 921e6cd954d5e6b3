"""The shipped drug table and the lookup_drug tool."""

import json
import re

from wenzhen.serve.tools import call_tool, drug_table, lookup_drug, tool_schemas


def test_drug_table_has_thirty_entries_and_no_doses() -> None:
    drugs = drug_table()
    assert len(drugs) >= 30
    for drug in drugs:
        assert drug["indications"] and drug["contraindications"] and drug["cautions"]
        text = json.dumps(drug, ensure_ascii=False)
        assert not re.search(r"\d+\s*(?:mg|毫克|克|ml|毫升|片/次|粒)|每次|每日\d|一日\d", text), drug["name"]


def test_lookup_by_generic_name_brand_name_and_part_of_a_name() -> None:
    assert lookup_drug("布洛芬")["name"] == "布洛芬"
    assert lookup_drug("芬必得")["name"] == "布洛芬"
    assert lookup_drug("Ibuprofen")["name"] == "布洛芬"
    assert lookup_drug("藿香正气水")["name"] == "藿香正气"
    missing = lookup_drug("不存在的药")
    assert missing["found"] is False and "布洛芬" in missing["known"]


def test_call_tool_returns_json_and_reports_model_mistakes() -> None:
    assert json.loads(call_tool("lookup_drug", {"name": "扑热息痛"}))["name"] == "对乙酰氨基酚"
    assert "error" in json.loads(call_tool("lookup_drug", {"drug": "x"}))
    assert "error" in json.loads(call_tool("no_such_tool", {}))


def test_schema_is_chatglm3_function_format() -> None:
    (schema,) = tool_schemas()
    assert schema["name"] == "lookup_drug"
    assert schema["parameters"]["required"] == ["name"]
