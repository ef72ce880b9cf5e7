"""Print the config reference (every key, its default and its comment) as a markdown table,
read from dllm_jax/config.py's `default_config()` so the README cannot drift from the code."""

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dllm_jax.config import default_config  # noqa: E402

SOURCE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "dllm_jax", "config.py")


def comments() -> dict[str, str]:
    out = {}
    pattern = re.compile(r"^\s*c\.([\w.]+)\s*=\s*(?!ml_collections).*?#\s*(.*)$")
    with open(SOURCE, encoding="utf-8") as f:
        for line in f:
            m = pattern.match(line)
            if m:
                out[m.group(1)] = m.group(2).strip()
    return out


def main() -> None:
    notes = comments()
    print("| key | default | meaning |\n|---|---|---|")

    def walk(node, prefix=""):
        for key, value in node.items():
            path = prefix + key
            if hasattr(value, "items"):
                walk(value, path + ".")
            else:
                shown = repr(value) if not isinstance(value, str) or value else "''"
                print(f"| `{path}` | `{shown}` | {notes.get(path, '').replace('|', '/')} |")

    walk(default_config())


if __name__ == "__main__":
    main()
