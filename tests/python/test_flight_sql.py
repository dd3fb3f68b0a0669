"""verbund from Python: the coordinator's Arrow Flight SQL endpoint through ADBC answers as
`verbund query` does (examples/python/verbund_query.py, docs/python.md).

The demo sites use differential privacy, whose noise is fixed per question and data: the same
question asked through ADBC and through the CLI gets the same numbers.
"""

import json
import math
import pathlib
import subprocess
import sys

import adbc_driver_manager
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples" / "python"))
import verbund_query  # noqa: E402  (the example is what researchers copy: test it)

QUERIES = [
    "SELECT sex, count(*) AS n, avg(bmi) AS mean_bmi FROM patients GROUP BY sex",
    "SELECT count(*) AS n FROM patients",
]


def token(demo):
    return pathlib.Path(demo["token_file"]).read_text().strip()


@pytest.fixture(scope="module")
def conn(demo):
    with verbund_query.connect(demo["flight_sql"], demo["ca"], token(demo), demo["project"]) as c:
        yield c


def cli_query(verbund, demo, sql):
    """`verbund query --format json`'s answer."""
    command = [
        str(verbund), "query", "--format", "json", "--coordinator", demo["api"], "--ca", demo["ca"],
        "--token-file", demo["token_file"], "--project", demo["project"], sql,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(command)}: {done.stderr}"
    return json.loads(done.stdout)


def group_key(row):
    """Rows sorted by their group key: every column but the floating-point ones."""
    return tuple((v is None, str(v)) for k, v in sorted(row.items()) if not isinstance(v, float))


def assert_rows_equal(adbc_rows, cli_rows, columns):
    # The CLI's JSON leaves out null values; ADBC's rows have every column.
    cli_rows = [{c: row.get(c) for c in columns} for row in cli_rows]
    adbc_rows, cli_rows = sorted(adbc_rows, key=group_key), sorted(cli_rows, key=group_key)
    assert len(adbc_rows) == len(cli_rows), (adbc_rows, cli_rows)
    for ours, theirs in zip(adbc_rows, cli_rows):
        assert ours.keys() == theirs.keys(), (ours, theirs)
        for column, value in ours.items():
            other = theirs[column]
            if isinstance(value, float) or isinstance(other, float):
                assert value is not None and other is not None, (column, ours, theirs)
                assert math.isclose(value, other, rel_tol=1e-9, abs_tol=1e-9), (column, ours, theirs)
            else:
                assert value == other, (column, ours, theirs)


@pytest.mark.parametrize("sql", QUERIES)
def test_adbc_answers_as_the_cli(conn, verbund, demo, sql):
    table = verbund_query.query(conn, sql)
    cli = cli_query(verbund, demo, sql)
    assert table.num_rows > 0, table
    assert_rows_equal(table.to_pylist(), cli["rows"], table.column_names)

    meta = verbund_query.verbund_metadata(table)
    assert meta["query_id"], table.schema.metadata
    sites = sorted((s["site"], s["status"], s["groups"]) for s in meta["sites"])
    assert sites == sorted((s["site"], s["status"], s["groups"]) for s in cli["sites"])
    assert len(sites) == 3 and all(status == "answered" for _, status, _ in sites), sites
    assert meta["complete"], table.schema.metadata
    assert isinstance(meta["notes"], list)


def test_pandas(conn):
    frame = verbund_query.query(conn, QUERIES[0]).to_pandas()
    assert list(frame.columns) == ["sex", "n", "mean_bmi"]
    assert (frame["n"] >= 5).all(), frame


def test_bad_token_is_refused(demo):
    with pytest.raises(adbc_driver_manager.Error) as refused:
        with verbund_query.connect(demo["flight_sql"], demo["ca"], "not-a-token", demo["project"]) as c:
            verbund_query.query(c, QUERIES[1])
    assert "token" in str(refused.value).lower(), refused.value


def test_get_objects_lists_the_demo_dataset(conn):
    objects = conn.adbc_get_objects().read_all().to_pylist()
    tables = {
        (catalog["catalog_name"], table["table_name"])
        for catalog in objects
        for schema in catalog["catalog_db_schemas"] or []
        for table in schema["db_schema_tables"] or []
    }
    assert ("demo-study", "patients") in tables, objects


def test_get_info_names_the_vendor(conn):
    info = conn.adbc_get_info()
    assert info["vendor_name"] == "verbund coordinator", info


def test_example_script(demo, tmp_path):
    info = tmp_path / "demo.json"
    info.write_text(json.dumps(demo))
    script = ROOT / "examples" / "python" / "verbund_query.py"
    done = subprocess.run(
        [sys.executable, str(script), "--info", str(info), QUERIES[0]], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(": answered") == 3, done.stdout
    assert "mean_bmi" in done.stdout, done.stdout
