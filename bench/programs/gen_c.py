#!/usr/bin/python3
"""gen_c.py - writes the large C file of the gcc case and the number it must print.

    gen_c.py FUNCTIONS OUT.c EXPECTED.txt

gcc's memory use is dominated by its own allocations (trees, RTL, bitmaps, obstacks);
a big translation unit with many non-trivial functions keeps it allocating for seconds.
Each generated function is a little integer mixer with a loop and a switch; main chains
them and prints the result, which is computed here too so the compiled program can be
checked (a miscompile caused by allocator corruption would print a different number).
"""
import sys

M = 0xFFFFFFFF


def main():
    n, out_c, out_exp = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    s = 2463534242
    def rnd():
        nonlocal s
        s ^= (s << 13) & M
        s ^= s >> 17
        s ^= (s << 5) & M
        return s

    lines = ["#include <stdio.h>", "#include <stdint.h>", ""]
    x = 1
    for i in range(n):
        a, b, sh, k = rnd() | 1, rnd(), 1 + rnd() % 30, 1 + rnd() % 4
        cases = [rnd() for _ in range(4)]
        lines.append(f"static uint32_t f{i}(uint32_t x)\n{{")
        lines.append(f"    for (int j = 0; j < {k}; j++) {{")
        lines.append(f"        x = x * {a}u + {b}u;")
        lines.append(f"        x ^= x >> {sh};")
        lines.append("        switch (x & 3) {")
        for c in range(4):
            lines.append(f"        case {c}: x += {cases[c]}u; break;")
        lines.append("        }")
        lines.append("    }")
        lines.append("    return x;\n}\n")
        for _ in range(k):
            x = (x * a + b) & M
            x ^= x >> sh
            x = (x + cases[x & 3]) & M
    lines.append("int main(void)\n{\n    uint32_t x = 1;")
    lines += [f"    x = f{i}(x);" for i in range(n)]
    lines.append('    printf("%u\\n", x);\n    return 0;\n}')
    with open(out_c, "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(out_exp, "w") as f:
        f.write(f"{x}\n")


if __name__ == "__main__":
    main()
