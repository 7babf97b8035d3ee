"""Agent for the hook tests: SQL through sqlite3, including attempts around the gate."""

import sqlite3
import sys

path = sys.argv[1]
conn = sqlite3.connect(path)
conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")
conn.execute("INSERT INTO items (name) VALUES (?)", ("a",))
conn.commit()
print("SELECT", conn.execute("SELECT count(*) FROM items").fetchone()[0])

try:
    conn.execute("DROP TABLE items")
    print("DROP ok")
except PermissionError as exc:
    print("DROP denied:", exc)

cursor = conn.cursor()
try:
    # Around the Python wrapper: the authorizer still refuses it.
    sqlite3.Cursor.execute(cursor, "DROP TABLE items")
    print("RAW DROP ok")
except sqlite3.DatabaseError as exc:
    print("RAW DROP refused:", exc)

try:
    import _sqlite3

    _sqlite3.connect(path)
    print("RAW CONNECT ok")
except PermissionError as exc:
    print("RAW CONNECT refused:", exc)

try:
    conn.executescript("SELECT 1; DROP TABLE items;")
    print("SCRIPT ok")
except PermissionError as exc:
    print("SCRIPT denied:", exc)

tables = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
print("TABLES", [name for (name,) in tables])
