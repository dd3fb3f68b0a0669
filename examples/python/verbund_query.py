"""Ask verbund from Python: Arrow Flight SQL through ADBC, into pandas (docs/python.md).

With a demo network (`verbund demo --serve --info-file demo.json`) in another terminal:

    python verbund_query.py --info demo.json \
        "SELECT sex, count(*) AS n, avg(bmi) AS mean_bmi FROM patients GROUP BY sex"

Against a real coordinator, name what the info file would hold:

    python verbund_query.py --uri grpc+tls://coordinator.example:7071 --ca ca.pem \
        --token-file researcher.token --project my-study "SELECT count(*) AS n FROM patients"

The answer is an Arrow table. Its schema metadata says how each site answered
(`verbund.sites`), what the coordinator noted (`verbund.notes`), whether every site answered
(`verbund.complete`) and the query's id (`verbund.query_id`).
"""

import argparse
import json
import pathlib

import adbc_driver_flightsql.dbapi as flightsql
from adbc_driver_flightsql import DatabaseOptions

# A federated query runs while the driver waits for its first answer (GetFlightInfo), so the
# driver's query timeout must exceed the coordinator's deadline (default 30 s, at most 300 s).
QUERY_TIMEOUT_SECONDS = 330


def connect(uri, ca_file, token, project=None, timeout=QUERY_TIMEOUT_SECONDS):
    """An ADBC connection to the coordinator: TLS with the network's CA, the token as a
    Bearer header on every call, the project as the `x-verbund-project` header."""
    options = {
        # The PEM text itself, not a path.
        DatabaseOptions.TLS_ROOT_CERTS.value: pathlib.Path(ca_file).read_text(),
        DatabaseOptions.AUTHORIZATION_HEADER.value: f"Bearer {token}",
        DatabaseOptions.TIMEOUT_QUERY.value: str(float(timeout)),
    }
    if project:
        options[DatabaseOptions.RPC_CALL_HEADER_PREFIX.value + "x-verbund-project"] = project
    # verbund has no transactions: autocommit spares the driver's warning about them.
    return flightsql.connect(uri, db_kwargs=options, autocommit=True)


def query(conn, sql):
    """Runs one query; the Arrow table keeps the schema metadata (pandas would drop it)."""
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetch_arrow_table()


def verbund_metadata(table):
    """The `verbund.*` schema metadata, with `sites` and `notes` decoded from JSON."""
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    return {
        "query_id": meta.get("verbund.query_id"),
        "complete": meta.get("verbund.complete") == "true",
        "sites": json.loads(meta.get("verbund.sites", "[]")),
        "notes": json.loads(meta.get("verbund.notes", "[]")),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--info", help="the info file of `verbund demo --serve --info-file`")
    p.add_argument("--uri", help="grpc+tls://HOST:PORT, the coordinator's researcher address")
    p.add_argument("--ca", help="the network's CA (PEM)")
    p.add_argument("--token-file", help="file holding your token (JWT)")
    p.add_argument("--project", help="the research project (one your token grants)")
    p.add_argument("sql")
    a = p.parse_args()
    if a.info:
        info = json.loads(pathlib.Path(a.info).read_text())
        uri, ca, token_file, project = info["flight_sql"], info["ca"], info["token_file"], info.get("project")
    else:
        uri, ca, token_file, project = a.uri, a.ca, a.token_file, a.project
    if not (uri and ca and token_file):
        p.error("give --info, or --uri, --ca and --token-file")
    # Overrides from the command line win over the info file.
    uri, ca, token_file, project = a.uri or uri, a.ca or ca, a.token_file or token_file, a.project or project
    token = pathlib.Path(token_file).read_text().strip()

    with connect(uri, ca, token, project) as conn:
        table = query(conn, a.sql)

    meta = verbund_metadata(table)
    print(f"query {meta['query_id']}: {'complete' if meta['complete'] else 'PARTIAL'}")
    for s in meta["sites"]:
        print(f"site {s['site']}: {s['status']} ({s.get('groups', 0)} groups, {s['elapsed_ms']:.0f} ms) {s['message']}")
    for note in meta["notes"]:
        print("note:", note)
    print(table.to_pandas())  # or polars.from_arrow(table)


if __name__ == "__main__":
    main()
