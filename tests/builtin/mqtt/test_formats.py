"""Message -> rows for the mqtt source: every preset and format, batches, every rejection."""

from __future__ import annotations

import json
import re

import pytest

from edged.base.errors import RowError
from edged.builtin.mqtt.formats import (
    MessageParser,
    TopicRouter,
    check_template,
    make_decoder,
)
from edged.plugin.rows import MESSAGE_REASONS, ROW_REASONS, RowDecoder
from edged.windturbine import layout
from edged.windturbine.simulator import WindFarm

INPUTS = layout.INPUTS
TOPIC = "turbines/turbine-7/raw"


def records(rows: int = 3, turbines: int = 1, seed: int = 3) -> list[list[str]]:
    farm = WindFarm(turbines=turbines, rate_hz=20, seed=seed)
    return farm.records(farm.ticks(rows), 1_700_000_000.0)


def dataset_values(record: list[str]) -> list[float]:
    return [float(record[layout.DATASET_COLUMNS.index(c)]) for c in INPUTS]


def successor(record: list[str]) -> list[str]:
    return [record[layout.DATASET_COLUMNS.index(c)] for c in layout.SUCCESSOR_COLUMNS]


def as_object(record: list[str], columns=layout.DATASET_COLUMNS) -> dict:
    text = {"nanoId", "turbineId", "eventTime"}
    fields = dict(zip(layout.DATASET_COLUMNS, record, strict=True))
    return {c: fields[c] if c in text else float(fields[c]) for c in columns}


def parser(layout_name="dataset23", topics=("turbines/{turbine}/raw",), fmt="auto",
           max_bytes=65536, turbine=None, turbine_field=None, columns=None, keys=None,
           pattern=None):
    allow = None if pattern is None else re.compile(pattern)
    decoder = make_decoder(layout_name, INPUTS, columns=columns, keys=keys,
                           turbine_field=turbine_field, turbine_pattern=allow)
    return MessageParser(decoder, TopicRouter(topics, pattern=allow), fmt=fmt,
                         max_bytes=max_bytes, turbine=turbine)


def parse(p: MessageParser, payload: bytes | str, topic: str = TOPIC):
    if isinstance(payload, str):
        payload = payload.encode()
    turbines, values, rejected = [], [], []
    count = p.parse(topic, payload, turbines, values, rejected)
    assert count == len(values)
    return turbines, values, [e.reason for e in rejected]


def message_reason(p: MessageParser, payload: bytes | str, topic: str = TOPIC) -> str:
    with pytest.raises(RowError) as caught:
        parse(p, payload, topic)
    return caught.value.reason


# -- topics ------------------------------------------------------------------------------


def test_topic_templates_subscribe_with_plus_and_name_the_turbine():
    router = TopicRouter(["turbines/{turbine}/raw", "site/+/{turbine}/data", "bus/#",
                          "turbines/{turbine}/raw"])
    assert router.subscriptions == ("turbines/+/raw", "site/+/+/data", "bus/#")
    assert router.turbine("turbines/t1/raw") == "t1"
    assert router.turbine("turbines/t1/raw") == "t1"  # cached
    assert router.turbine("site/north/t9/data") == "t9"
    assert router.turbine("bus/anything/at/all") is None
    assert router.turbine("bus") is None
    for topic in ("turbines/t1/raw/extra", "turbines//raw", "other/t1/raw", "turbines/t1"):
        with pytest.raises(RowError) as caught:
            router.turbine(topic)
        assert caught.value.reason == "unknown_topic"


@pytest.mark.parametrize("template", [
    "", "turbines/x{turbine}/raw", "a/{turbine}/{turbine}", "a/{site}/raw", "a/b+/c",
    "a/#/c", "a/x#",
])
def test_bad_templates_are_refused(template):
    with pytest.raises(ValueError):
        check_template(template)


# -- presets and formats -----------------------------------------------------------------


def test_dataset23_csv_one_row():
    record = records(1)[0]
    turbines, values, rejected = parse(parser(), ",".join(record))
    assert turbines == ["turbine-7"]  # from the topic, not the row
    assert values == [dataset_values(record)]
    assert rejected == []


def test_dataset23_json_object_and_batches():
    recs = records(4)
    p = parser()
    expected = [dataset_values(r) for r in recs]
    _, values, _ = parse(p, json.dumps(as_object(recs[0])))
    assert values == expected[:1]
    for payload in ([as_object(r) for r in recs], {"rows": [as_object(r) for r in recs]},
                    [r for r in recs]):
        turbines, values, rejected = parse(p, json.dumps(payload))
        assert values == expected, payload
        assert turbines == ["turbine-7"] * 4
        assert rejected == []
    # One positional row as a plain JSON array.
    _, values, _ = parse(p, json.dumps(recs[1]))
    assert values == expected[1:2]


def test_csv_batches_with_crlf_blank_lines_and_quotes():
    recs = records(3)
    p = parser()
    text = "\r\n".join(",".join(r) for r in recs) + "\r\n\r\n"
    turbines, values, rejected = parse(p, text)
    assert values == [dataset_values(r) for r in recs]
    assert len(turbines) == 3 and rejected == []
    quoted = "\n".join(",".join(f'"{f}"' for f in r) for r in recs)
    assert parse(p, quoted)[1] == [dataset_values(r) for r in recs]


def test_successor20_csv_and_json():
    recs = records(2)
    p = parser("successor20", topics=("turbine/raw",), turbine="mini-1")
    expected = [dataset_values(r) for r in recs]
    turbines, values, _ = parse(p, ",".join(successor(recs[0])), "turbine/raw")
    assert (turbines, values) == (["mini-1"], expected[:1])
    text = "\n".join(",".join(successor(r)) for r in recs)
    assert parse(p, text, "turbine/raw")[1] == expected
    objects = [as_object(r, layout.SUCCESSOR_COLUMNS) for r in recs]
    assert parse(p, json.dumps(objects), "turbine/raw")[1] == expected


def test_successor20_input_positions_match_the_reference():
    # windturbine.md: qx=6, qy=7, qz=8, qw=5, wind_speed_rps=3, rps=2, voltage=4
    decoder = make_decoder("successor20", INPUTS)
    fields = [str(i) for i in range(20)]
    assert decoder.from_fields(fields) == [6.0, 7.0, 8.0, 5.0, 3.0, 2.0, 4.0]


def test_custom_layout_columns_and_keys():
    columns = ["id", "volts", "rot", "wind", "w", "x", "y", "z"]
    keys = {"voltage": "volts", "rps": "rot", "wind_speed_rps": "wind", "qw": "w",
            "qx": "x", "qy": "y", "qz": "z"}
    p = parser("custom", topics=("farm/data",), turbine_field="id",
               columns=["id", "voltage", "rps", "wind_speed_rps", "qw", "qx", "qy", "qz"],
               keys=keys)
    turbines, values, _ = parse(p, "t3,48,1.6,2.1,1,0.01,0.02,0.03", "farm/data")
    assert turbines == ["t3"]
    assert values == [[0.01, 0.02, 0.03, 1.0, 2.1, 1.6, 48.0]]
    row = dict(zip(columns, ["t4", 48, 1.6, 2.1, 1, 0.01, 0.02, 0.03], strict=True))
    turbines, values, _ = parse(p, json.dumps(row), "farm/data")
    assert turbines == ["t4"]
    assert values == [[0.01, 0.02, 0.03, 1.0, 2.1, 1.6, 48.0]]


def test_keys_only_layout_takes_json_and_refuses_csv_rows():
    p = parser("custom", keys={"voltage": "v"}, topics=("t/{turbine}",))
    row = {name: 1.0 for name in INPUTS if name != "voltage"} | {"v": 5.0}
    assert parse(p, json.dumps(row), "t/a")[1] == [[1, 1, 1, 1, 1, 1, 5]]
    assert parse(p, "1,2,3", "t/a")[2] == ["wrong_width"]


def test_turbine_field_with_a_batch_level_default():
    p = parser(topics=("farm/raw",), turbine_field="turbineId")
    recs = records(1, turbines=3)
    turbines, _, _ = parse(p, "\n".join(",".join(r) for r in recs), "farm/raw")
    assert turbines == ["turbine-0", "turbine-1", "turbine-2"]
    rows = [{k: v for k, v in as_object(r).items() if k != "turbineId"} for r in recs]
    rows[1]["turbineId"] = "own-id"
    turbines, _, rejected = parse(p, json.dumps({"turbineId": "batch", "rows": rows}),
                                  "farm/raw")
    assert turbines == ["batch", "own-id", "batch"] and rejected == []
    turbines, _, rejected = parse(p, json.dumps(rows), "farm/raw")
    assert turbines == ["own-id"] and rejected == ["no_turbine", "no_turbine"]


def test_explicit_format_overrides_detection():
    record = records(1)[0]
    # As CSV, a JSON object happens to split into 23 fields, none of them numbers.
    assert parse(parser(fmt="csv"), json.dumps(as_object(record)))[2] == ["not_a_number"]
    assert message_reason(parser(fmt="json"), ",".join(record)) == "bad_json"
    # auto looks past leading white space
    assert len(parse(parser(), "  \n" + json.dumps(as_object(record)))[1]) == 1


# -- rejections --------------------------------------------------------------------------


def test_every_row_reason_and_good_rows_survive_their_bad_neighbours():
    good = records(1)[0]

    def spoil(column: str, value: str) -> list[str]:
        bad = list(good)
        bad[layout.DATASET_COLUMNS.index(column)] = value
        return bad

    lines = [
        good,
        good[:-1],  # wrong_width
        spoil("rps", "fast"),  # not_a_number
        spoil("voltage", ""),  # missing_field
        spoil("qx", "nan"),  # not_finite
        spoil("qz", "1e999"),  # not_finite
        good,
    ]
    p = parser(topics=("farm/raw",), turbine_field="turbineId", pattern="turbine-[0-9]+")
    lines.append(spoil("turbineId", " "))  # no_turbine
    lines.append(spoil("turbineId", "t" * 129))  # bad_turbine_id
    lines.append(spoil("turbineId", "ghost-1"))  # turbine_not_allowed
    turbines, values, rejected = parse(p, "\n".join(",".join(r) for r in lines), "farm/raw")
    assert values == [dataset_values(good)] * 2
    assert rejected == ["wrong_width", "not_a_number", "missing_field", "not_finite",
                        "not_finite", "no_turbine", "bad_turbine_id", "turbine_not_allowed"]
    assert set(rejected) | {"bad_json"} == set(ROW_REASONS)


def test_json_row_reasons():
    good = as_object(records(1)[0])
    rows = [
        good,
        {k: v for k, v in good.items() if k != "voltage"},  # missing_field
        good | {"rps": "fast"},  # not_a_number
        good | {"rps": True},  # not_a_number: a boolean is not a reading
        good | {"qx": None},  # missing_field
        good | {"qx": [1]},  # not_a_number
        good | {"voltage": 10**400},  # not_finite (beyond float)
        42,  # bad_json: a row must be an object or an array
        list(records(1)[0])[:5],  # wrong_width
        good | {"rps": 1, "voltage": "47.5"},  # fine: ints and numeric strings are numbers
    ]
    _, values, rejected = parse(parser(), json.dumps(rows))
    assert rejected == ["missing_field", "not_a_number", "not_a_number", "missing_field",
                        "not_a_number", "not_finite", "bad_json", "wrong_width"]
    assert len(values) == 2 and values[1][INPUTS.index("voltage")] == 47.5
    nan_row = json.dumps(good).replace(json.dumps(good["qz"]), "NaN", 1)
    assert parse(parser(), nan_row)[2] == ["not_finite"]


def test_every_message_reason():
    p = parser(max_bytes=1000)
    assert message_reason(p, "1," * 600) == "too_large"
    assert message_reason(p, b"\xff\xfe1,2,3") == "not_utf8"
    assert message_reason(p, "{not json") == "bad_json"
    assert message_reason(parser(fmt="json"), "42") == "bad_json"
    assert parse(p, "42")[2] == ["wrong_width"]  # auto: not JSON-looking, so one CSV row
    assert message_reason(p, ",".join(records(1)[0]), "elsewhere/t/raw") == "unknown_topic"
    for empty in ("", "   ", "\n\n", "[]", '{"rows": []}'):
        assert message_reason(p, empty) == "empty", empty
    assert message_reason(p, '{"a":' * 100 + "1" + "}" * 100) == "too_deep"
    huge_field = '"' + "x" * 140_000 + '",1'  # over the csv module's field size limit
    assert message_reason(parser(max_bytes=200_000), huge_field) == "bad_csv"
    assert message_reason(p, "1,2", "turbines/" + "t" * 129 + "/raw") == "bad_turbine_id"
    assert message_reason(parser(pattern="T[0-9]+"), "1,2", TOPIC) == "turbine_not_allowed"
    batch = parser(topics=("farm/raw",), turbine_field="turbineId")
    assert message_reason(batch, '{"turbineId": [], "rows": [{}]}', "farm/raw") == "no_turbine"
    assert set(MESSAGE_REASONS) == {
        "too_large", "not_utf8", "bad_json", "too_deep", "bad_csv", "unknown_topic", "empty",
        "no_turbine", "bad_turbine_id", "turbine_not_allowed"}


def test_too_large_is_refused_before_parsing():
    p = parser()
    huge = b"\xff" * (10 * 1024 * 1024)  # would be not_utf8 if it were read at all
    assert message_reason(p, huge) == "too_large"
    batch = "\n".join(",".join(r) for r in records(100))
    assert len(batch) < 65536
    assert len(parse(p, batch)[1]) == 100


def test_no_turbine_when_nothing_names_it():
    p = parser("successor20", topics=("turbine/raw",), turbine_field="turbineId")
    line = ",".join(successor(records(1)[0]))
    assert parse(p, line, "turbine/raw")[2] == ["no_turbine"]
    assert parse(p, json.dumps(as_object(records(1)[0], layout.SUCCESSOR_COLUMNS)),
                 "turbine/raw")[2] == ["no_turbine"]


def test_layout_errors_are_config_errors():
    with pytest.raises(ValueError, match="no column"):
        make_decoder("custom", INPUTS, columns=["a", "b"])
    with pytest.raises(ValueError, match="custom"):
        make_decoder("dataset23", INPUTS, columns=["a"])
    with pytest.raises(ValueError, match="not inputs"):
        make_decoder("dataset23", INPUTS, keys={"volts": "v"})


def test_replay_style_decoder_is_unchanged():
    decoder = RowDecoder(layout.DATASET_COLUMNS, INPUTS, turbine_column="turbineId")
    record = records(1)[0]
    assert decoder.from_fields(record) == dataset_values(record)
    assert decoder.turbine(record) == "turbine-0"


# -- many messages at once -----------------------------------------------------------------


def test_parse_lines_takes_plain_rows_on_known_topics_and_leaves_the_rest():
    recs = records(8, turbines=2)
    p = parser()
    lines = [",".join(r).encode() for r in recs]
    p.router.turbine("turbines/a/raw")  # seen before: its id is known
    spoiled = list(recs[2])
    spoiled[layout.DATASET_COLUMNS.index("voltage")] = "lots"
    short = b",".join(lines[7].split(b",")[:-1])
    messages = [
        ("turbines/a/raw", lines[0]),
        ("turbines/b/raw", lines[1]),  # a topic not seen yet: parse matches it
        ("turbines/a/raw", ",".join(spoiled).encode()),
        ("turbines/a/raw", json.dumps(as_object(recs[3])).encode()),
        ("turbines/a/raw", lines[4] + b"\n" + lines[5]),  # a batch of two rows
        ("turbines/a/raw", b" " + lines[4]),  # format auto looks closer at a space
        ("turbines/a/raw", lines[4] + b"\r\n" + lines[5]),
        ("turbines/a/raw", lines[6] + b"\n"),
        ("turbines/a/raw", short + b"\n" + lines[7] + b",x"),  # the right total of fields
        ("turbines/a/raw", lines[5]),
    ]
    rest, turbines, values, ends = p.parse_lines(*zip(*messages, strict=True))
    assert rest == [1, 2, 3, 5, 6, 7, 8]
    assert turbines == ["a"] * 4
    assert values.tolist() == [dataset_values(recs[i]) for i in (0, 4, 5, 5)]
    assert ends == [1, 1, 1, 1, 3, 3, 3, 3, 3, 4]
