"""Prints, as JSON, the columns (name, type OID) each console command
answers, through psycopg2 as the PgBouncer exporter connects:
describe.py DSN COMMAND... -> {"SHOW POOLS": [["database", 25], ...], ...}"""
import json
import sys

import psycopg2

conn = psycopg2.connect(sys.argv[1])
conn.autocommit = True
out = {}
with conn.cursor() as cur:
    for command in sys.argv[2:]:
        cur.execute(command)
        out[command] = [[d.name, d.type_code] for d in cur.description]
print(json.dumps(out))
