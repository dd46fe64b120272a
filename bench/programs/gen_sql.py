#!/usr/bin/python3
"""gen_sql.py - writes the SQL script for the sqlite3 case and the output it must produce.

    gen_sql.py ROWS SCRIPT.sql EXPECTED.txt

The script builds tables in an in-memory database (inserts, an index, updates, deletes,
a join, grouping and sorting), which keeps sqlite's page cache, parser and b-tree code
allocating.  The expected query results are computed here in Python from the same
deterministic data, so the runner can check sqlite's output under every allocator.
"""
import sys


def lcg(seed):
    """Deterministic pseudo-random stream (no dependence on Python's random module)."""
    x = seed
    while True:
        x = (x * 6364136223846793005 + 1442695040888963407) & (2**64 - 1)
        yield x >> 33


def main():
    rows, script, expected = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    r = lcg(42)
    alphabet = "abcdefghijklmnopqrstuvwxyz"
    items = {}
    tags = []
    out = ["BEGIN;",
           "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT, cat INTEGER, "
           "price INTEGER, note TEXT);",
           "CREATE TABLE tags(item INTEGER, tag TEXT);"]
    for i in range(1, rows + 1):
        name = "".join(alphabet[next(r) % 26] for _ in range(4 + next(r) % 12))
        cat = next(r) % 50
        price = next(r) % 10000
        note = "n" * (next(r) % 200)   # variable-length payloads: records of many sizes
        items[i] = [name, cat, price]
        out.append(f"INSERT INTO items VALUES({i},'{name}',{cat},{price},'{note}');")
        for _ in range(next(r) % 3):
            tag = alphabet[next(r) % 26] + str(next(r) % 100)
            tags.append((i, tag))
            out.append(f"INSERT INTO tags VALUES({i},'{tag}');")
    out.append("COMMIT;")
    out.append("CREATE INDEX items_cat ON items(cat);")
    out.append("CREATE INDEX tags_item ON tags(item);")
    out.append("UPDATE items SET price = price + 1 WHERE cat % 3 = 0;")
    out.append("DELETE FROM items WHERE id % 7 = 0;")
    for i in list(items):
        if items[i][1] % 3 == 0:
            items[i][2] += 1
        if i % 7 == 0:
            del items[i]

    exp = []
    out.append("SELECT count(*), sum(price) FROM items;")
    exp.append(f"{len(items)}|{sum(v[2] for v in items.values())}")
    out.append("SELECT cat, count(*), sum(price) FROM items GROUP BY cat ORDER BY cat;")
    groups = {}
    for v in items.values():
        g = groups.setdefault(v[1], [0, 0])
        g[0] += 1
        g[1] += v[2]
    exp += [f"{c}|{g[0]}|{g[1]}" for c, g in sorted(groups.items())]
    out.append("SELECT count(*) FROM items JOIN tags ON tags.item = items.id "
               "WHERE tags.tag LIKE 'a%';")
    exp.append(str(sum(1 for i, t in tags if i in items and t.startswith("a"))))
    out.append("SELECT id, name FROM items ORDER BY name, id LIMIT 20;")
    exp += [f"{i}|{v[0]}" for i, v in sorted(items.items(), key=lambda kv: (kv[1][0], kv[0]))[:20]]

    with open(script, "w") as f:
        f.write("\n".join(out) + "\n")
    with open(expected, "w") as f:
        f.write("\n".join(exp) + "\n")


if __name__ == "__main__":
    main()
