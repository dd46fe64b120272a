"""objects.py - the object-heavy Python program of the python3 case.

    python3 objects.py SCALE

Run by bench/run with PYTHONMALLOC=malloc, so every Python object (not only the ones
above pymalloc's 512-byte limit) is a malloc/free of the allocator under test.  It mixes
what typical Python code does: many small instances and dicts, lists that grow, string
building and splitting, a tree built and torn down, sorting, and a big dict that is
emptied.  It checks its own results and exits 1 on a mismatch.
"""
import sys


class Node:
    __slots__ = ("key", "left", "right")

    def __init__(self, key):
        self.key = key
        self.left = None
        self.right = None


def tree_insert(root, key):
    """Iterative BST insert (no recursion limit issues)."""
    node = Node(key)
    if root is None:
        return node
    cur = root
    while True:
        if key < cur.key:
            if cur.left is None:
                cur.left = node
                return root
            cur = cur.left
        else:
            if cur.right is None:
                cur.right = node
                return root
            cur = cur.right


def tree_inorder(root):
    out, stack, cur = [], [], root
    while stack or cur:
        while cur:
            stack.append(cur)
            cur = cur.left
        cur = stack.pop()
        out.append(cur.key)
        cur = cur.right
    return out


class Record:
    def __init__(self, i):
        self.id = i
        self.name = "rec%d" % i
        self.tags = ["t%d" % (i % 7), "g%d" % (i % 13)]
        self.attrs = {"weight": i % 101, "flag": i % 2 == 0}


def fail(msg):
    print("CHECK FAILED: objects.py: " + msg, file=sys.stderr)
    sys.exit(1)


def main():
    scale = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    n = max(2000, int(60000 * scale))
    x = 12345
    keys = []
    for _ in range(n):
        x = (x * 1103515245 + 12345) % 2**31
        keys.append(x)

    for rnd in range(3):
        # instances with per-object dicts and lists
        recs = [Record(i) for i in range(n)]
        by_tag = {}
        for r in recs:
            for t in r.tags:
                by_tag.setdefault(t, []).append(r)
        if sum(len(v) for v in by_tag.values()) != 2 * n:
            fail("tag index size")
        weight = sum(r.attrs["weight"] for r in recs if r.attrs["flag"])
        if weight != sum(i % 101 for i in range(0, n, 2)):
            fail("weights")

        # string building and splitting
        text = ",".join(r.name for r in recs)
        parts = text.split(",")
        if len(parts) != n or parts[-1] != "rec%d" % (n - 1):
            fail("string round trip")

        # a tree built then dropped, checked against sorted()
        root = None
        for k in keys[: n // 2]:
            root = tree_insert(root, k)
        if tree_inorder(root) != sorted(keys[: n // 2]):
            fail("tree order")

        # a big dict filled and emptied by deletion (many frees in hash order)
        d = {k: (k, str(k)) for k in keys}
        for k in keys[::2]:
            del d[k]
        if len(d) != len(set(keys[1::2]) - set(keys[::2])):
            fail("dict deletion")
        del recs, by_tag, text, parts, root, d
    print("objects.py ok: %d objects per round" % n)


main()
