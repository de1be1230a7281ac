"""The group's JSON lines: a process's JSON record passes through with its part, anything else is wrapped."""

from __future__ import annotations

import datetime
import io
import json

from honcho.printer import Message

from coda_bridge.ops.jsonlines import JsonLinesStream, JsonPrinter, json_line


def test_a_json_record_passes_through_with_the_part_added() -> None:
    record = {"time": "2026-12-06T20:53:30.513Z", "level": "WARNING", "message": "broker down"}
    assert json.loads(json_line("jobs", json.dumps(record))) == {**record, "part": "jobs"}


def test_a_raw_line_is_wrapped_with_an_iso_utc_time_and_masked() -> None:
    # given a raw line a process printed, carrying a bearer value
    entry = json.loads(json_line("bridge", "  headers: Authorization: Bearer abc.def", now=0.0))
    # then it is one object, UTC time, the part named, the secret masked
    assert entry["time"] == "1970-01-01T00:00:00.000Z"
    assert datetime.datetime.fromisoformat(entry["time"]).utcoffset() == datetime.timedelta(0)
    assert (entry["part"], entry["logger"]) == ("bridge", "output")
    assert entry["message"] == "  headers: Authorization: Bearer [secret]"


def test_json_that_is_no_log_record_is_wrapped_too() -> None:
    assert json.loads(json_line("web", "[1, 2]"))["message"] == "[1, 2]"


def test_the_printer_writes_one_object_per_line_and_names_the_supervisor() -> None:
    out = io.StringIO()
    printer = JsonPrinter(out, system_name="system")
    now = datetime.datetime.now()
    printer.write(Message(type="line", data=b"one\ntwo\n", time=now, name="jobs", colour=None))
    printer.write(Message(type="line", data="bridge started (pid=1)\n", time=now, name="system", colour=None))
    entries = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(e["part"], e["message"]) for e in entries] == [
        ("jobs", "one"),
        ("jobs", "two"),
        ("system", "bridge started (pid=1)"),
    ]
    assert entries[2]["logger"] == "coda_bridge.ops.group"


def test_a_raw_stream_writes_whole_lines_as_json_only_once_they_end() -> None:
    # given the standard output of a one-process node in JSON mode
    out = io.StringIO()
    stream = JsonLinesStream("node", out)
    # when a print comes in pieces, then a traceback of two lines
    stream.write("half a ")
    assert out.getvalue() == ""
    stream.write("line\nTraceback (most recent call last):\n  File 'x.py'\n")
    # then each ended line is one object of the part
    entries = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(e["part"], e["message"]) for e in entries] == [
        ("node", "half a line"),
        ("node", "Traceback (most recent call last):"),
        ("node", "  File 'x.py'"),
    ]
