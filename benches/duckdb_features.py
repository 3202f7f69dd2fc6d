"""DuckDB side of the feature benchmark (benches/features.rs runs it).

Reads the raw Parquet of a redflower root and runs a list of family queries exported by
redflower (features::family_queries), materialising every result in a temporary table, and
prints one JSON line: seconds, result rows, peak RSS, DuckDB version. The only rewrite is
days-since-last, since DuckDB has no DATE -> INTEGER cast.

    python3 benches/duckdb_features.py ROOT QUERIES.json THREADS
"""

import json
import re
import sys
import time

import duckdb


def peak_rss_mib():
    # VmHWM belongs to this process image; ru_maxrss would carry the parent's peak over the
    # fork and report the Rust bench's memory instead
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


root, queries_file, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
queries = json.load(open(queries_file))

con = duckdb.connect()
con.execute(f"SET threads = {threads}")
con.execute("SET TimeZone = 'UTC'")
for source in ["events", "certificates", "repayments", "profiles", "limit_requests"]:
    con.execute(
        f"CREATE VIEW {source} AS SELECT * FROM read_parquet('{root}/raw/{source}/*/*.parquet', "
        f"hive_partitioning = true, hive_types = {{'dt': VARCHAR}})"
    )

# redflower writes days-since-last as CAST(CAST(MAX(t) [FILTER (...)] AS DATE) AS INT)
days_since = re.compile(r"CAST\(CAST\((MAX\(.*?) AS DATE\) AS INT\)")
old_days_since = re.compile(r"MAX\(CAST\((.*?) AS INT\)\)")

started = time.perf_counter()
rows = 0
for label, sql in queries:
    sql = days_since.sub(lambda m: f"(CAST({m.group(1)} AS DATE) - DATE '1970-01-01')", sql)
    # and as versions before 2026-12-02 wrote it, MAX(CAST(day AS INT))
    sql = old_days_since.sub(lambda m: f"MAX({m.group(1)} - DATE '1970-01-01')", sql)
    # materialise inside DuckDB, as redflower materialises its batches
    con.execute(f"CREATE OR REPLACE TEMP TABLE result AS {sql}")
    rows += con.execute("SELECT COUNT(*) FROM result").fetchone()[0]
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "rows": rows, "peak_rss_mib": peak_rss_mib(), "duckdb": duckdb.__version__}))
